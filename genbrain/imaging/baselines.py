"""Non-DiT baselines for enhancement and cross-modality synthesis (paper Figs. 3-4).

- **Population mean**: every subject's prediction is the mean training target (V,): what a
  method scores without any subject-specific information.
- **Non-local means** (enhancement only): ``skimage.restoration.denoise_nl_means`` on the 3D
  volume, cropped to the brain's bounding box, with the noise sd estimated from the image and
  ``h = 0.8 sigma`` (scikit-image's recommendation with ``fast_mode``). Patches of 5 voxels and
  a search distance of 2: on the MNI T1 template with Gaussian noise of 5% of its range this
  scored +5.1 dB PSNR in 0.8 s (one busy core), better than distance 3 (+4.8 dB, 2.4 s) or 6
  (+4.2 dB, 23 s).
  The noise sd is a median absolute deviation of finest-scale Haar detail coefficients
  (Donoho's estimator, which ``skimage.restoration.estimate_sigma`` computes with a db2
  wavelet) over the 2x2x2 blocks lying wholly inside the brain mask: the stores keep brain
  voxels only, so the zero background would pull a whole-grid median towards 0 (and
  ``estimate_sigma`` needs PyWavelets, which the pinned environment lacks). Measured on the
  template (scaled to [0, 1]) with Gaussian noise inside the mask: 0.0216 / 0.0508 / 0.0994
  for true sds 0.02 / 0.05 / 0.1; the anatomy alone reads as 0.006 (its floor).
- **3D U-Net** (MONAI ``UNet``, spatial_dims = 3, one input channel per source modality, one
  output channel): voxel vectors are scattered onto the brain's bounding box of the 2 mm grid
  (x 10:82, y 10:100, z 0:77; the GenBrain ResNet crop [9:81, 10:100, 1:77] cuts 39 mask
  voxels) and zero-padded to a multiple of 2^len(strides) per side (72 x 96 x 80 for three
  strides); trained with Adam for a fixed number of steps on random mini-batches, the loss
  (L1 or MSE) taken over brain voxels only. Seeded: the initialisation and the batches come
  from ``settings.seed`` without touching the global torch RNG. Only the drawn batch is
  gridded (training and prediction), so the pairs can stay memory-mapped: 1,000 pairs of 15
  sources would be 33 GB on the grid.

Inputs and targets are whatever the stores hold (per-modality normalised vectors); each
baseline's output is in its target's units (NL-means: the input's raw units).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from genbrain.errors import GenbrainInputError
from genbrain.space import StandardSpace, standard_space

#: bounding box of FSL's 2 mm brain mask on the 91x109x91 grid (all 228,483 voxels inside)
BRAIN_BOX: tuple[slice, slice, slice] = (slice(10, 82), slice(10, 100), slice(0, 77))
LOSSES = ("l1", "mse")


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- population mean


def population_mean(train_targets: np.ndarray, block: int = 256) -> np.ndarray:
    """Mean training target: (n, V) array or memmap -> float32 (V,), summed in float64 over
    row blocks of ``block`` (memory ~ block x V x 8 bytes)."""
    x = train_targets
    if x.ndim != 2 or len(x) == 0:
        raise GenbrainInputError(f"population mean: expected (n, V) training targets with n >= 1, "
                                 f"got shape {x.shape}")
    total = np.zeros(x.shape[1])
    for s in range(0, len(x), block):
        total += np.asarray(x[s:s + block], np.float64).sum(axis=0)
    return (total / len(x)).astype(np.float32)


def predict_mean(mean: np.ndarray, n: int) -> np.ndarray:
    """The population-mean prediction for n subjects: (V,) -> (n, V) (a read-only view)."""
    return np.broadcast_to(np.asarray(mean, np.float32), (n, len(mean)))


# ---------------------------------------------------------------- non-local means


def estimate_noise_sigma(volume: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Noise sd of a 3D volume: median |finest Haar detail| / 0.6745 over the 2x2x2 blocks
    wholly inside ``mask`` (all blocks without one). Same units as the volume."""
    x = np.asarray(volume, np.float64)
    even = tuple(slice(0, s - s % 2) for s in x.shape)
    x = x[even]
    blocks = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, x.shape[2] // 2, 2)
    s = np.array([1.0, -1.0])
    kernel = s[:, None, None] * s[None, :, None] * s[None, None, :] / math.sqrt(8.0)
    detail = np.einsum("aibjck,ijk->abc", blocks, kernel)  # orthonormal: sd = noise sd
    if mask is not None:
        m = np.asarray(mask, bool)[even].reshape(blocks.shape).all(axis=(1, 3, 5))
        detail = detail[m]
    if detail.size == 0:
        raise GenbrainInputError("noise estimate: the mask holds no 2x2x2 block")
    return float(np.median(np.abs(detail)) / 0.6745)


def nlmeans_denoise(volume: np.ndarray, mask: np.ndarray | None = None,
                    sigma: float | None = None, patch_size: int = 5, patch_distance: int = 2,
                    h_factor: float = 0.8, box: tuple[slice, ...] | None = BRAIN_BOX
                    ) -> np.ndarray:
    """Non-local-means denoising of one 3D volume (X, Y, Z) -> float32 (X, Y, Z).

    ``sigma``: noise sd (default :func:`estimate_noise_sigma` inside ``mask``); the filter
    strength is ``h = h_factor * sigma``. Only ``box`` is denoised (outside it the input is
    kept, and zeroed outside ``mask`` when one is given)."""
    from skimage.restoration import denoise_nl_means

    vol = np.asarray(volume, np.float64)
    if vol.ndim != 3:
        raise GenbrainInputError(f"nlmeans: expected a 3D volume, got shape {vol.shape}")
    sigma = estimate_noise_sigma(vol, mask) if sigma is None else float(sigma)
    box = tuple(slice(None) for _ in range(3)) if box is None else box
    out = vol.copy()
    if sigma > 0:
        out[box] = denoise_nl_means(vol[box], patch_size=patch_size,
                                    patch_distance=patch_distance, h=h_factor * sigma,
                                    sigma=sigma, fast_mode=True, channel_axis=None)
    if mask is not None:
        out[~np.asarray(mask, bool)] = 0.0
    return out.astype(np.float32)


def nlmeans_vectors(vectors: np.ndarray, space: StandardSpace | None = None,
                    **kwargs) -> np.ndarray:
    """NL-means of voxel vectors (n, V) of the standard space -> float32 (n, V); each vector
    is scattered to its volume (0 outside the mask) and denoised with the brain mask
    (``kwargs`` go to :func:`nlmeans_denoise`)."""
    space = standard_space() if space is None else space
    x = np.atleast_2d(np.asarray(vectors))
    return np.stack([space.to_vector(nlmeans_denoise(space.to_volume(v.astype(np.float32)),
                                                     space.mask, **kwargs)) for v in x])


# ---------------------------------------------------------------- 3D U-Net


@dataclass(frozen=True)
class UNetSettings:
    """The MONAI 3D U-Net baseline and its training (config section ``baselines.unet``).

    Attributes:
        channels: feature channels per level (paper-scale runs would use e.g. 32..256).
        strides: down-sampling stride between levels (len(channels) - 1 entries).
        num_res_units: residual units per block (MONAI's default 0 is plain convolutions).
        steps: optimiser steps; batch_size: volumes per step; lr: Adam learning rate.
        loss: ``l1`` or ``mse``, averaged over brain voxels.
        seed: initialisation and batch order.
    """

    channels: tuple[int, ...] = (8, 16, 32)
    strides: tuple[int, ...] = (2, 2)
    num_res_units: int = 1
    steps: int = 300
    batch_size: int = 2
    lr: float = 1e-3
    loss: str = "l1"
    seed: int = 0
    section: str = field(default="baselines.unet", compare=False, repr=False)

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> GenbrainInputError:
            return GenbrainInputError(f"config key '{self.section}.{name}': expected {expected}, "
                                      f"got {getattr(self, name)}")

        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise bad("channels", "at least two positive channel counts")
        if len(self.strides) != len(self.channels) - 1 or min(self.strides) < 1:
            raise bad("strides", f"{len(self.channels) - 1} positive strides (one fewer than "
                                 "channels)")
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "an integer >= 1")
        if self.num_res_units < 0:
            raise bad("num_res_units", "an integer >= 0")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a learning rate > 0")
        if self.loss not in LOSSES:
            raise bad("loss", f"one of {LOSSES}")

    @property
    def multiple(self) -> int:
        """Each side is padded to a multiple of this (the product of the strides)."""
        return int(np.prod(self.strides))


def build_unet(in_channels: int, settings: UNetSettings) -> torch.nn.Module:
    """A MONAI 3D UNet with ``in_channels`` inputs and one output channel, initialised from
    ``settings.seed`` (the global torch RNG is left as it was)."""
    from monai.networks.nets import UNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return UNet(spatial_dims=3, in_channels=int(in_channels), out_channels=1,
                    channels=settings.channels, strides=settings.strides,
                    num_res_units=settings.num_res_units)


def _loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
          kind: str) -> torch.Tensor:
    err = (pred - target).abs() if kind == "l1" else (pred - target) ** 2
    if weight is None:
        return err.mean()
    return (err * weight).sum() / (weight.sum() * err.shape[0]).clamp_min(1.0)


def _checked(sources: np.ndarray, targets: np.ndarray | None, grid: BrainGrid | None,
             settings: UNetSettings | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The inputs as arrays (no copy: a memmap stays one), their shapes checked: volumes
    (n, K, X, Y, Z) and (n, X, Y, Z), or with ``grid`` voxel vectors (n, K, V) and (n, V)."""
    src = np.asarray(sources)
    tgt = None if targets is None else np.asarray(targets)
    if grid is None:
        want, ok = "(n, K, X, Y, Z) and targets (n, X, Y, Z)", src.ndim == 5
    else:
        want = f"(n, K, V) and targets (n, V), V = {grid.space.n_voxels}"
        ok = src.ndim == 3 and src.shape[2] == grid.space.n_voxels
    if tgt is not None:
        want += ", n >= 1"
        ok = ok and len(src) >= 1 and tgt.shape == (src.shape[0], *src.shape[2:])
    if not ok:
        got = "" if tgt is None else f" and {tgt.shape}"
        raise GenbrainInputError(f"unet: expected sources {want}, got {src.shape}{got}")
    sides = src.shape[2:] if grid is None else grid.shape
    if settings is not None and any(s % settings.multiple for s in sides):
        raise GenbrainInputError(f"unet: volume sides {sides} must be multiples of "
                                 f"{settings.multiple} (the product of the strides)")
    return src, tgt


def _volumes(grid: BrainGrid | None) -> Callable[[np.ndarray], np.ndarray]:
    """Rows of the inputs -> float32 volumes: scattered onto ``grid`` when there is one."""
    return grid.to_grid if grid is not None else (lambda rows: np.asarray(rows, np.float32))


def train_unet(sources: np.ndarray, targets: np.ndarray, settings: UNetSettings,
               mask: np.ndarray | None = None, device: str | torch.device | None = None,
               model: torch.nn.Module | None = None, grid: BrainGrid | None = None
               ) -> tuple[torch.nn.Module, np.ndarray]:
    """Train a 3D U-Net on volumes: sources (n, K, X, Y, Z), targets (n, X, Y, Z), sides
    multiples of ``settings.multiple``; ``mask`` (X, Y, Z) restricts the loss. With ``grid``,
    sources (n, K, V) and targets (n, V) are voxel vectors, scattered onto the grid one batch
    at a time, and ``mask`` defaults to ``grid.mask``.

    Either may be a memmap: each step reads only its batch's rows, so memory is one batch
    (its rows, and batch_size x (K + 1) float32 volumes), the model, its Adam state and one
    batch's activations, whatever n is.

    Returns (the model in eval mode, on ``device``; the (steps,) training losses). Batches are
    drawn with replacement by a generator seeded with ``settings.seed``."""
    src, tgt = _checked(sources, targets, grid, settings)
    volumes = _volumes(grid)
    if mask is None and grid is not None:
        mask = grid.mask
    dev = _device(device)
    net = (build_unet(src.shape[1], settings) if model is None else model).to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    weight = None if mask is None else torch.as_tensor(np.asarray(mask, np.float32),
                                                       device=dev)[None, None]
    gen = torch.Generator().manual_seed(settings.seed)
    losses = np.empty(settings.steps)
    for step in range(settings.steps):
        idx = torch.randint(0, len(src), (settings.batch_size,), generator=gen).numpy()
        x = torch.from_numpy(volumes(src[idx])).to(dev)  # (B, K, X, Y, Z)
        y = torch.from_numpy(volumes(tgt[idx]))[:, None].to(dev)  # (B, 1, X, Y, Z)
        loss = _loss(net(x), y, weight, settings.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = float(loss.detach())
    return net.eval(), losses


@torch.no_grad()
def predict_unet(model: torch.nn.Module, sources: np.ndarray, batch_size: int = 2,
                 grid: BrainGrid | None = None) -> np.ndarray:
    """U-Net predictions: sources (n, K, X, Y, Z) -> float32 (n, X, Y, Z); with ``grid``,
    voxel vectors (n, K, V) -> float32 (n, V). Sources may be a memmap: one batch of them is
    read and gridded at a time (memory: the output and one batch)."""
    model.eval()
    dev = next(model.parameters()).device
    src, _ = _checked(sources, None, grid)
    volumes = _volumes(grid)
    out = np.empty((len(src), *(src.shape[2:] if grid is None else (grid.space.n_voxels,))),
                   np.float32)
    for i in range(0, len(src), batch_size):
        pred = model(torch.from_numpy(volumes(src[i:i + batch_size])).to(dev))[:, 0]
        pred = pred.float().cpu().numpy()  # (B, X, Y, Z)
        out[i:i + batch_size] = pred if grid is None else grid.to_vectors(pred)
    return out


@dataclass(frozen=True)
class BrainGrid:
    """Voxel vectors <-> the brain's bounding box of the standard grid, zero-padded at the
    high end of each side to a multiple of ``multiple``.

    Attributes:
        space: the standard space; box: the crop; multiple: side multiple of the padding.
    """

    space: StandardSpace
    box: tuple[slice, slice, slice] = BRAIN_BOX
    multiple: int = 4

    def __post_init__(self) -> None:
        inside = self.space.mask[self.box].sum()
        if inside != self.space.n_voxels:
            raise GenbrainInputError(f"unet grid: the crop {self.box} holds {inside} of the "
                                     f"{self.space.n_voxels} mask voxels")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) of the padded crop."""
        sides = [len(range(*b.indices(n))) for b, n in zip(self.box, self.space.shape)]
        return tuple(int(math.ceil(s / self.multiple) * self.multiple) for s in sides)

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """Boolean (X, Y, Z) brain mask on the padded crop (its voxels in vector order)."""
        return self._pad(self.space.mask[self.box])

    def _pad(self, crop: np.ndarray) -> np.ndarray:
        out = np.zeros(crop.shape[:-3] + self.shape, dtype=crop.dtype)
        x, y, z = crop.shape[-3:]
        out[..., :x, :y, :z] = crop
        return out

    def to_grid(self, vectors: np.ndarray) -> np.ndarray:
        """(..., V) vectors -> float32 (..., X, Y, Z) padded crops (0 outside the mask);
        scattered straight onto the crop, never the whole 91x109x91 grid."""
        v = np.asarray(vectors, np.float32)
        if v.shape[-1] != self.space.n_voxels:
            raise ValueError(f"expected vectors of length {self.space.n_voxels}, got {v.shape}")
        out = np.zeros(v.shape[:-1] + self.shape, np.float32)
        out[..., self.mask] = v
        return out

    def to_vectors(self, grids: np.ndarray) -> np.ndarray:
        """(..., X, Y, Z) padded crops -> float32 (..., V) vectors."""
        g = np.asarray(grids, np.float32)
        return g[..., self.mask]


@dataclass
class UNetBaseline:
    """A trained U-Net on voxel vectors: ``fit`` on training pairs, ``predict`` new subjects.

    Attributes:
        model: the MONAI UNet; settings: its settings; grid: the vector <-> volume mapping;
        in_channels: K, the number of source modalities; losses: (steps,) training losses.
    """

    model: torch.nn.Module
    settings: UNetSettings
    grid: BrainGrid
    in_channels: int
    losses: np.ndarray

    @staticmethod
    def _sources(sources: np.ndarray) -> np.ndarray:
        s = np.asarray(sources)
        return s[:, None] if s.ndim == 2 else s  # (n, V) -> (n, 1, V)

    @classmethod
    def fit(cls, sources: np.ndarray, targets: np.ndarray, settings: UNetSettings,
            space: StandardSpace | None = None, device: str | torch.device | None = None
            ) -> UNetBaseline:
        """Train on sources (n, K, V) (or (n, V) for one source) and targets (n, V), either
        possibly memory-mapped: see :func:`train_unet` (``grid``) for what is held."""
        space = standard_space() if space is None else space
        grid = BrainGrid(space, multiple=settings.multiple)
        src = cls._sources(sources)
        model, losses = train_unet(src, targets, settings, device=device, grid=grid)
        return cls(model, settings, grid, src.shape[1], losses)

    def predict(self, sources: np.ndarray, batch_size: int = 2) -> np.ndarray:
        """Predictions for sources (n, K, V) (or (n, V)), possibly memory-mapped, -> float32
        (n, V), gridded one batch at a time."""
        src = self._sources(sources)
        if src.ndim != 3 or src.shape[1] != self.in_channels:
            raise GenbrainInputError(f"unet: the model takes {self.in_channels} source "
                                     f"channels, got sources of shape {np.shape(sources)}")
        return predict_unet(self.model, src, batch_size, grid=self.grid)

    def save(self, path: str | os.PathLike) -> None:
        """Write {state_dict, settings, in_channels, losses} with ``torch.save``."""
        settings = {k: v for k, v in asdict(self.settings).items() if k != "section"}
        torch.save({"state_dict": self.model.state_dict(), "settings": settings,
                    "in_channels": self.in_channels, "losses": self.losses}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, space: StandardSpace | None = None,
             device: str | torch.device | None = None) -> UNetBaseline:
        """Read a model written by :meth:`save`."""
        blob = torch.load(path, map_location="cpu", weights_only=False)
        settings = UNetSettings(**blob["settings"])
        model = build_unet(blob["in_channels"], settings)
        model.load_state_dict(blob["state_dict"])
        grid = BrainGrid(standard_space() if space is None else space,
                         multiple=settings.multiple)
        return cls(model.to(_device(device)).eval(), settings, grid, int(blob["in_channels"]),
                   np.asarray(blob["losses"]))

