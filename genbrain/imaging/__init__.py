"""Image enhancement and cross-modality synthesis (paper Figs. 3-4): how corrupted images are
made, how predicted images are scored, and the non-DiT methods the DiT is compared with.
Wired by ``rules/imaging.smk`` (config ``imaging``, ``results/imaging/<task>/``).

- :mod:`genbrain.imaging.plan`: the stage: its planner, the pairs step, the methods'
  predictions, the score tables (the GenBrain fine-tune is not yet a method).
- :mod:`genbrain.imaging.figures`: its figures (the paper's Fig. 3 layout).

- :mod:`genbrain.imaging.corrupt`: the corruption simulator of the enhancement task (rigid
  motion in k-space, Gaussian and Rician noise).
- :mod:`genbrain.imaging.metrics`: the image metrics (and DeepTaskGen's for resting-state ->
  task synthesis).
- :mod:`genbrain.imaging.baselines`: the baselines (population mean, non-local means, a MONAI
  3D U-Net).
"""
