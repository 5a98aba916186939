"""Gaussian diffusion (IDDPM with learned variance) and guided DDIM sampling.

The maths follows openai/improved-diffusion (``gaussian_diffusion.py``, ``respace.py``), with
the schedule held as float64 numpy arrays and gathered per timestep into torch.

Forward process, linear betas 1e-4..0.02 over 1000 steps, ``abar_t = prod_{s<=t} (1 - beta_s)``:
    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, beta~_t I),
    c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),
    c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t),
    beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).

Model output: ``[pred, v]`` along channels (each C channels). ``pred`` is what the network is
trained to predict, chosen by ``prediction``:
- ``"epsilon"`` (the paper, DiT, improved-diffusion): the noise; then
  ``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.
- ``"v"`` (Salimans & Ho 2022, "v-prediction"): ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``;
  then ``x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`` and ``eps = sqrt(1 - abar_t) x_t +
  sqrt(abar_t) v``. Why offer it: with epsilon, an error e in the prediction becomes an error
  e / sqrt(abar_t) in x_0, 156x at t = 999 of this schedule, so DDIM from pure noise needs a
  nearly perfect network at the noisiest steps, and the epsilon loss weights x_0 errors there
  by the SNR (~4e-5), so a briefly trained model never learns what brains look like on average.
  With v, x_0 errors cost (1 + SNR) times their square at every t and are never amplified.
  Measured on the CPU demo (2 x 256 DiT with modality templates, 300 steps): epsilon samples
  had std ~30 (data: 1), v samples 1.1-1.5 with r 0.77-0.90 with the mean image for the
  structural modalities (README, "Pretraining on a CPU"). The paper's setting stays the default.
The reverse-process mean is the posterior mean at that ``x_0``; its log variance is
``frac log beta_t + (1 - frac) log beta~_t`` with ``frac = (v + 1) / 2`` (learned range; this
``v`` is the variance interpolation, not the v-prediction).

Training loss (IDDPM hybrid, as DiT's RESCALED_MSE): ``mean((target - pred)^2)`` (target = the
noise, or v) plus the
variational-bound term in bits per dimension, computed with the mean detached so that it trains
only the variance; scaled by ``num_timesteps / 1000``. The bound term is KL(q posterior || p) for
t > 0; at t = 0 it is the decoder negative log-likelihood. improved-diffusion uses a discretised
Gaussian there, which assumes 8-bit images in [-1, 1]; our voxel values are continuous
standardised intensities, so we use the continuous Gaussian NLL ``0.5 (log 2 pi + log s2 +
(x_0 - mu)^2 / s2)``. It can be negative (a density, not a probability), so the logged hybrid
loss may dip below zero on batches with t = 0; the gradient is what matters. Timesteps are
uniform (:meth:`GaussianDiffusion.sample_timesteps`). No clipping of x_0: values are unbounded.

Sampling: :class:`DDIMSampler` respaces to 50 evenly spaced steps (improved-diffusion's
``space_timesteps(1000, [50])`` = 0, 20, 41, ..., 979, 999, betas recomputed from the kept
``abar``) and runs DDIM with eta = 0. Classifier-free guidance acts on epsilon only:
``eps = eps_null + s (eps_cond - eps_null)``; the variance channels are the conditional ones (as
DiT). (With v-prediction the same combination is applied to v: eps is affine in v with the
same coefficients for both branches at a given x_t, so guiding v guides eps identically.) Conditional and null rows go through the model in one batch ``[cond; null]``, the null
rows flagged by ``force_drop`` so the model applies the same null labels it was trained with
(null age = standardised 0). ``k`` independent noises per row are sampled and averaged. All
randomness comes from the ``torch.Generator`` passed in; noise is drawn on the generator's device
and then moved, so a seed gives the same initial noise on CPU and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genbrain.errors import GenbrainInputError

#: model(x_t (N, C_in, V), t (N,) original-scale timesteps) -> (N, 2C, V) [pred, v]
ModelFn = Callable[[Tensor, Tensor], Tensor]
#: what the network's first C output channels predict
PREDICTIONS = ("epsilon", "v")
#: arithmetic of the sampler's model calls
PRECISIONS = ("fp32", "bf16")


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
    """(num_timesteps,) float64 linear schedule; scaled by 1000/num_timesteps as in
    improved-diffusion so that other lengths keep the same overall noise."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Timesteps kept when respacing, improved-diffusion's ``space_timesteps``: the range is
    split into ``len(section_counts)`` equal sections and each keeps ``count`` evenly spaced
    steps, ``round(i * (size - 1) / (count - 1))``, both ends included.

    ``section_counts`` is an int (50), a list ([10, 15, 20]) or a string ("50", "10,15,20",
    "ddim50"). NB: "ddimN" here means N evenly spaced steps, the same as "N" (for 50 of 1000:
    0, 20, 41, ..., 979, 999); improved-diffusion's "ddimN" instead takes a stride of T // N
    (0, 20, ..., 980). Returns the sorted kept timesteps.
    """
    if isinstance(section_counts, str):
        text = section_counts.removeprefix("ddim")
        try:
            section_counts = [int(x) for x in text.split(",")]
        except ValueError:
            raise GenbrainInputError(f"timestep respacing '{section_counts}' is not understood; "
                                     "expected e.g. 50, 'ddim50' or '10,15,20'") from None
    elif isinstance(section_counts, (int, np.integer)):
        section_counts = [int(section_counts)]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise GenbrainInputError(f"cannot keep {count} timesteps out of a section of {size}")
        stride = 1 if count == 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(steps))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension: (N, ...) -> (N,)."""
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """Elementwise continuous log N(x; mean, e^log_var) in nats."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


class GaussianDiffusion:
    """The noise schedule and its formulas. ``betas`` (S,) float64; ``timestep_map`` (S,) gives
    the original timestep of each (respaced) step and is what the model is fed; ``prediction``
    (one of ``PREDICTIONS``) is what the model's first output channels estimate."""

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int] | None = None,
                 prediction: str = "epsilon"):
        if prediction not in PREDICTIONS:
            raise GenbrainInputError(f"prediction '{prediction}' is unknown; expected one of: "
                                     f"{', '.join(PREDICTIONS)}")
        self.prediction = prediction
        betas = np.asarray(betas, dtype=np.float64)
        assert betas.ndim == 1 and (betas > 0).all() and (betas <= 1).all(), "bad betas"
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = (np.arange(len(betas)) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        # beta~_0 = 0: clip its log to beta~_1, as improved-diffusion
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / one_minus
        self.log_betas = np.log(betas)
        self.one_minus_alphas_cumprod = one_minus
        self.log_one_minus_alphas_cumprod = np.log(one_minus)
        self._tables: dict[tuple, Tensor] = {}  # torch copies of the arrays, per device/dtype

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02, prediction: str = "epsilon") -> GaussianDiffusion:
        """The paper's schedule: linear betas 1e-4..0.02 over 1000 steps."""
        return cls(linear_betas(num_timesteps, beta_start, beta_end), prediction=prediction)

    def respace(self, use_timesteps: Iterable[int]) -> GaussianDiffusion:
        """A diffusion over the kept steps only, with betas recomputed from their ``abar``
        (``beta'_i = 1 - abar_{k_i} / abar_{k_{i-1}}``) and the timestep map composed."""
        use = sorted({int(i) for i in use_timesteps})
        if not use or use[0] < 0 or use[-1] >= self.num_timesteps:
            raise GenbrainInputError(f"respaced timesteps must lie in 0..{self.num_timesteps - 1}")
        abar = self.alphas_cumprod[use]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return GaussianDiffusion(betas, timestep_map=self.timestep_map[use],
                                 prediction=self.prediction)

    # ------------------------------------------------------------------ helpers
    def _extract(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Schedule array ``name`` at steps t (N,), shaped (N, 1, ..., 1) to broadcast to x.
        float32 (float64 for float64 x); the tables are copied once per device, so gathering
        never synchronises with the GPU."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        key = (name, x.device, dtype)
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(getattr(self, name), dtype=dtype, device=x.device)
        out = self._tables[key][t.to(x.device)]  # (N,)
        return out.reshape(-1, *([1] * (x.ndim - 1)))  # (N, 1, 1)

    def model_timesteps(self, t: Tensor) -> Tensor:
        """Step indices (N,) -> the original timesteps the model was trained on (N,)."""
        key = ("timestep_map", t.device, torch.long)
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(self.timestep_map, device=t.device)
        return self._tables[key][t]

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> Tensor:
        """(n,) uniform step indices in 0..S-1 drawn on the generator's device, then moved."""
        gdev = generator.device if generator is not None else "cpu"
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=gdev)
        return t.to(device or gdev)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log variance of q(x_t | x_0); x_start (N, C, V), t (N,)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start  # (N, C, V)
        var = self._extract("one_minus_alphas_cumprod", t, x_start)  # (N, 1, 1)
        log_var = self._extract("log_one_minus_alphas_cumprod", t, x_start)  # (N, 1, 1)
        return mean, var, log_var

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, all (N, C, V)."""
        return (self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
                + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor,
                                  t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean (N, C, V), variance and clipped log variance (N, 1, 1) of q(x_{t-1} | x_t, x_0)."""
        mean = (self._extract("posterior_mean_coef1", t, x_t) * x_start
                + self._extract("posterior_mean_coef2", t, x_t) * x_t)  # (N, C, V)
        var = self._extract("posterior_variance", t, x_t)  # (N, 1, 1)
        log_var = self._extract("posterior_log_variance_clipped", t, x_t)  # (N, 1, 1)
        return mean, var, log_var

    # ------------------------------------------------------------------ reverse process
    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), all (N, C, V)."""
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """epsilon = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1), all (N, C, V)."""
        return ((self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0)
                / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t))

    def velocity(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, all (N, C, V)."""
        return (self._extract("sqrt_alphas_cumprod", t, x_start) * noise
                - self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * x_start)

    def eps_and_xstart(self, pred: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The model's prediction channels (N, C, V) at x_t, steps t -> (eps, x_0), each
        (N, C, V), whatever ``prediction`` the model was trained with."""
        if self.prediction == "epsilon":
            return pred, self.predict_xstart_from_eps(x_t, t, pred)
        a = self._extract("sqrt_alphas_cumprod", t, x_t)  # (N, 1, 1)
        s = self._extract("sqrt_one_minus_alphas_cumprod", t, x_t)  # (N, 1, 1)
        return s * x_t + a * pred, a * x_t - s * pred

    def training_target(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the prediction channels are regressed on: the noise, or v."""
        return noise if self.prediction == "epsilon" else self.velocity(x_start, t, noise)

    def p_mean_variance(self, model_output: Tensor, x_t: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Model output (N, 2C, V) = [pred, v] at x_t (N, C, V), steps t (N,) -> dict of
        ``mean``, ``variance``, ``log_variance`` (N, C, V), ``pred_xstart`` and ``eps``."""
        C = x_t.shape[1]
        assert model_output.shape[1] == 2 * C, (model_output.shape, x_t.shape)
        pred, v = model_output.split(C, dim=1)  # 2 x (N, C, V)
        min_log = self._extract("posterior_log_variance_clipped", t, x_t)  # (N, 1, 1)
        max_log = self._extract("log_betas", t, x_t)  # (N, 1, 1)
        frac = (v + 1) / 2  # v in [-1, 1] -> [0, 1]
        log_var = frac * max_log + (1 - frac) * min_log  # (N, C, V)
        eps, pred_xstart = self.eps_and_xstart(pred, x_t, t)  # 2 x (N, C, V)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)  # (N, C, V)
        return {"mean": mean, "variance": torch.exp(log_var), "log_variance": log_var,
                "pred_xstart": pred_xstart, "eps": eps}

    def vb_terms_bpd(self, model_output: Tensor, x_start: Tensor, x_t: Tensor,
                     t: Tensor) -> Tensor:
        """(N,) variational-bound term in bits/dim: KL(q posterior || p) for t > 0, the
        continuous Gaussian decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]))
        nll = -mean_flat(gaussian_log_likelihood(x_start, out["mean"], out["log_variance"]))
        return torch.where(t.to(kl.device) == 0, nll, kl) / math.log(2.0)  # (N,)

    def training_losses(self, model: ModelFn, x_start: Tensor, t: Tensor,
                        noise: Tensor | None = None,
                        generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """IDDPM hybrid loss per sample. ``model(x_t, t_model)`` -> (N, 2C, V); x_start
        (N, C, V); t (N,) step indices. Returns ``loss`` = ``mse`` + ``vb`` (each (N,)); ``mse``
        is against the noise or v (``prediction``)."""
        if noise is None:
            gdev = generator.device if generator is not None else x_start.device
            noise = torch.randn(x_start.shape, generator=generator, device=gdev).to(x_start)
        x_t = self.q_sample(x_start, t, noise)  # (N, C, V)
        out = model(x_t, self.model_timesteps(t)).to(x_start.dtype)  # (N, 2C, V), autocast-safe
        C = x_start.shape[1]
        pred, v = out[:, :C], out[:, C:]  # 2 x (N, C, V)
        frozen = torch.cat([pred.detach(), v], dim=1)  # vb trains the variance only
        vb = self.vb_terms_bpd(frozen, x_start, x_t, t) * (self.num_timesteps / 1000.0)
        mse = mean_flat((self.training_target(x_start, t, noise) - pred) ** 2)  # (N,)
        return {"loss": mse + vb, "mse": mse, "vb": vb}


class DDIMSampler:
    """Guided DDIM sampling over a respaced schedule.

    Args:
        diffusion: the training diffusion (1000 steps).
        steps: respacing passed to :func:`space_timesteps` (50 = 0, 20, 41, ..., 999).
        guidance_scale: CFG scale s on epsilon (1.2 in the paper); ``None`` samples the
            conditional model alone (no null branch; s = 1 gives the same result at twice the cost).
        eta: DDIM stochasticity (0 = deterministic given the initial noise).
        clip_x0: clamp the predicted x_0 to [-clip_x0, clip_x0] at every step and recompute
            epsilon from it (improved-diffusion's ``clip_denoised`` with a data-scale bound);
            None (the paper's setting) leaves x_0 unbounded. Data here are z-scored, so a
            bound of ~5 only bites where a briefly trained model's x_0 estimate at high noise
            (amplified by 1/sqrt(alpha_bar), ~160x at t = 999) would blow up.
        precision: ``"fp32"`` or ``"bf16"``: the model calls run under bf16 autocast (as the
            trainer does on CUDA); the DDIM update itself stays float32. Fast where the
            hardware has bf16 matrix units (GPUs; CPUs with AVX512-BF16 or AMX: ~1.4x on the
            demo's AMD EPYC); elsewhere it is emulated and slower.
    """

    def __init__(self, diffusion: GaussianDiffusion, steps: int | str | Sequence[int] = 50,
                 guidance_scale: float | None = 1.2, eta: float = 0.0,
                 clip_x0: float | None = None, precision: str = "fp32"):
        self.diffusion = diffusion.respace(space_timesteps(diffusion.num_timesteps, steps))
        self.guidance_scale = guidance_scale
        self.eta = eta
        if clip_x0 is not None and not clip_x0 > 0:
            raise GenbrainInputError(f"clip_x0 must be > 0 or None, got {clip_x0}")
        self.clip_x0 = clip_x0
        if precision not in PRECISIONS:
            raise GenbrainInputError(f"sampling precision '{precision}' is unknown; expected one "
                                     f"of: {', '.join(PRECISIONS)}")
        self.precision = precision

    def _call(self, model: Callable[..., Tensor], x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            return model(x, *args, **kwargs).to(x.dtype)  # (B, 2C, V) float32

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
        return torch.randn(shape, generator=generator, device=generator.device).to(like.device)

    def guided_output(self, model: Callable[..., Tensor], x: Tensor, t: Tensor,
                      labels: Mapping[str, Tensor], x_cond: Tensor | None) -> Tensor:
        """One model evaluation at x (B, C, V), steps t (B,) -> (B, 2C, V) with guided eps.
        With guidance, the batch sent to the model is [cond; null] (2B rows)."""
        tm = self.diffusion.model_timesteps(t)  # (B,)
        B, C = x.shape[:2]
        if self.guidance_scale is None:
            x_in = x if x_cond is None else torch.cat([x, x_cond], dim=1)  # (B, C_in, V)
            drop = torch.zeros(B, dtype=torch.bool, device=x.device)
            return self._call(model, x_in, tm, force_drop=drop, **labels)
        x_in = x if x_cond is None else torch.cat([x, x_cond], dim=1)  # (B, C_in, V)
        x_in = torch.cat([x_in, x_in])  # (2B, C_in, V)
        drop = torch.arange(2 * B, device=x.device) >= B  # (2B,) second half null
        out = self._call(model, x_in, torch.cat([tm, tm]), force_drop=drop,
                         **{k: torch.cat([v, v]) for k, v in labels.items()})  # (2B, 2C, V)
        eps_c, eps_u = out[:B, :C], out[B:, :C]  # 2 x (B, C, V): eps, or v (same maths)
        eps = eps_u + self.guidance_scale * (eps_c - eps_u)  # (B, C, V)
        return torch.cat([eps, out[:B, C:]], dim=1)  # (B, 2C, V), conditional variance

    def step(self, model_output: Tensor, x: Tensor, t: Tensor,
             generator: torch.Generator) -> Tensor:
        """One DDIM update x_t -> x_{t_prev} (improved-diffusion's ``ddim_sample``)."""
        d = self.diffusion
        eps, x0 = d.eps_and_xstart(model_output[:, : x.shape[1]], x, t)  # 2 x (B, C, V)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = d.predict_eps_from_xstart(x, t, x0)  # consistent with the clamped x_0
        abar = d._extract("alphas_cumprod", t, x)  # (B, 1, 1)
        abar_prev = d._extract("alphas_cumprod_prev", t, x)  # (B, 1, 1)
        sigma = (self.eta * torch.sqrt((1 - abar_prev) / (1 - abar))
                 * torch.sqrt(1 - abar / abar_prev))  # (B, 1, 1)
        x = x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps  # (B, C, V)
        if self.eta > 0 and int(t[0]) > 0:
            x = x + sigma * self._noise(tuple(x.shape), generator, x)
        return x

    @torch.no_grad()
    def sample(self, model: Callable[..., Tensor], labels: Mapping[str, Tensor], n_voxels: int,
               generator: torch.Generator, *, n_channels: int = 1, x_cond: Tensor | None = None,
               k: int = 1, noise: Tensor | None = None) -> Tensor:
        """Draw images for N label rows -> (N, n_channels, n_voxels), each the mean of ``k``
        independent samples (all N * k in one batch, or 2 N k rows with guidance).

        ``model(x, t, force_drop=..., **labels)`` is e.g. a :class:`~genbrain.model.dit.DiT`;
        ``labels`` maps names to (N,) tensors on the model's device (age standardised);
        ``x_cond`` (N, C_extra, V) are image-conditioning channels appended to x.
        ``noise`` (N k, C, V): the initial x_T (rows in label order, the k samples of a label
        row adjacent); drawn from ``generator`` when None. Passing per-row noise makes each
        image independent of how rows are batched or sharded.
        """
        first = next(iter(labels.values())) if labels else x_cond
        if first is None:
            raise GenbrainInputError("sampling needs labels or x_cond to know the batch size")
        N = first.shape[0]
        labels = {name: v.repeat_interleave(k, dim=0) for name, v in labels.items()}  # (N k,)
        x_cond = None if x_cond is None else x_cond.repeat_interleave(k, dim=0)  # (N k, C_e, V)
        shape = (N * k, n_channels, n_voxels)
        if noise is not None and tuple(noise.shape) != shape:
            raise GenbrainInputError(f"sampling noise has shape {tuple(noise.shape)}; "
                                     f"expected {shape}")
        x = self._noise(shape, generator, first) if noise is None else \
            noise.to(first.device, torch.float32)  # (N k, C, V)
        for i in reversed(range(self.diffusion.num_timesteps)):
            t = torch.full((N * k,), i, dtype=torch.long, device=x.device)  # (N k,)
            out = self.guided_output(model, x, t, labels, x_cond)  # (N k, 2C, V)
            x = self.step(out, x, t, generator)  # (N k, C, V)
        return x.reshape(N, k, n_channels, n_voxels).mean(dim=1)  # (N, C, V)
