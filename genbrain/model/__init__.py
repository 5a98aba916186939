"""The GenBrain network and diffusion shared by pretraining, fine-tuning and synthesis.

- :mod:`genbrain.model.dit`: the 1-D diffusion transformer over voxel vectors, its presets
  (``build_dit``) and the zero-initialised fine-tuning surgeries.
- :mod:`genbrain.model.diffusion`: the Gaussian diffusion (schedule, IDDPM hybrid loss),
  timestep respacing and the guided DDIM sampler.

Nothing here picks a device: modules and tensors live where the caller puts them (``cuda`` when
present, else CPU), and random numbers come from the ``torch.Generator`` passed in.
"""

from genbrain.model.diffusion import DDIMSampler, GaussianDiffusion, linear_betas, space_timesteps
from genbrain.model.dit import PRESETS, DiT, build_dit, dit_from_spec, token_centroids

__all__ = ["PRESETS", "DDIMSampler", "DiT", "GaussianDiffusion", "build_dit", "dit_from_spec",
           "linear_betas", "space_timesteps", "token_centroids"]
