"""Corruption simulator for the image-enhancement task (paper Methods, "Image enhancement").

A clean image becomes a corrupted one in two steps, with parameters drawn per image:

1. **Rigid motion in k-space** (Shaw et al. 2020, the paper's ref. 46), applied with TorchIO's
   ``tio.Motion``: the volume is resampled at each of ``n`` rigid poses (rotation about the
   grid centre, then translation), each copy is Fourier transformed, and consecutive segments of
   k-space along the last array axis (z, TorchIO's slow phase-encoding direction) are taken
   from consecutive poses, split at the movement times. TorchIO swaps the unmoved copy into the segment holding the
   k-space centre, so the image keeps its pose and gains ghosting and blurring. Severity grows
   with the magnitudes only up to ~5 degrees / 5 mm per axis (measured on the MNI template):
   beyond that the moved segments are decorrelated from the original and PSNR saturates, so
   at the paper's Poisson(10) / Poisson(5) draws the times (how near the k-space centre) and
   the number of movements govern how bad an image gets.
   The draws follow the paper: the number of movements uniform on the integers
   ``n_movements = (lo, hi)`` (the paper's range is lost in its text, "sampled uniformly from
   ()"; we default to 1..4); their times uniform on (0, 1) (fraction of k-space), sorted; for
   every movement and axis a rotation magnitude ~ Poisson(``rotation_lambda`` = 10) degrees and a
   translation magnitude ~ Poisson(``translation_lambda`` = 5) mm, each with a random sign,
   **clipped** to +-``max_rotation`` (30 degrees) and +-``max_translation`` (10 mm). (The
   paper's "truncated" read as clipping: it moves the 1.4% of Poisson(5) draws above 10 to 10;
   rejection would push them below it. Poisson(10) exceeds 30 with probability 1e-7.)
2. **Noise** on raw, unnormalised intensities: Gaussian then Rician, each with its own standard
   deviation drawn independently and uniformly from ``sigmas`` (paper: 0, 5, ..., 50)::

       y = x + s_g * n0                             (Gaussian)
       z = | y + s_r * (n1 + i * n2) |              (Rician: magnitude of signal + complex noise)

   with n0, n1, n2 iid standard normal. Rician noise keeps z >= 0: where the signal is much
   larger than s_r it is nearly Gaussian with sd s_r; where the signal is 0 it is Rayleigh with
   mean s_r * sqrt(pi / 2). The sigmas are in the raw units of the paper's UK Biobank images;
   ``noise_scale`` multiplies them for images on another intensity scale (e.g. the demo's
   simulated T1w, whose white matter is near 1). Noise is added everywhere on the grid; callers
   keeping voxel vectors keep its in-mask part.

Every image has its own random stream, ``numpy.random.default_rng([seed,
name_seed(image_id)])`` (:func:`genbrain.seeds.name_seed`): its corruption does not depend on
which other images are processed, or in which order. The parameters drawn are returned as a
:class:`Corruption`, whose :meth:`Corruption.row` is one row of the corruption table written
beside the corrupted images.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.seeds import name_seed
from genbrain.space import StandardSpace, standard_space

#: the paper's noise levels: sigma in {0, 5, ..., 50} (raw intensity units)
PAPER_SIGMAS: tuple[float, ...] = tuple(float(s) for s in range(0, 55, 5))
#: upper limits of the settings: the paper's truncation bounds, and a cap on the movements
#: (each one costs a resampling of the volume, ~0.2 s at 91x109x91)
LIMITS = {"max_rotation": 30.0, "max_translation": 10.0, "n_movements": 16}
INTERPOLATIONS = ("linear", "nearest", "bspline")
TABLE_COLUMNS = ["image_id", "seed", "n_movements", "times", "rotations_deg",
                 "translations_mm", "max_abs_rotation_deg", "max_abs_translation_mm",
                 "sigma_gaussian", "sigma_rician", "noise_scale"]


@dataclass(frozen=True)
class CorruptionSettings:
    """How images are corrupted (config section ``corrupt``); checked on construction.

    Attributes:
        n_movements: (lo, hi) inclusive range of the number of rigid movements per image;
            (0, 0) turns motion off.
        rotation_lambda: Poisson mean of the rotation magnitudes (degrees, per axis).
        translation_lambda: Poisson mean of the translation magnitudes (mm, per axis).
        max_rotation: clip of the rotations (degrees), 0..30.
        max_translation: clip of the translations (mm), 0..10.
        sigmas: noise levels to draw from (raw intensity units), each >= 0; (0,) is no noise.
        noise_scale: multiplies the sigmas (> 0): the raw units of the images being corrupted.
        interpolation: resampling of the moved copies: ``linear``, ``nearest`` or ``bspline``.
        seed: base seed; image ``i`` draws from ``default_rng([seed, name_seed(image_id)])``.
    """

    n_movements: tuple[int, int] = (1, 4)
    rotation_lambda: float = 10.0
    translation_lambda: float = 5.0
    max_rotation: float = LIMITS["max_rotation"]
    max_translation: float = LIMITS["max_translation"]
    sigmas: tuple[float, ...] = PAPER_SIGMAS
    noise_scale: float = 1.0
    interpolation: str = "linear"
    seed: int = 0
    section: str = field(default="corrupt", compare=False, repr=False)

    def __post_init__(self) -> None:
        def key(name: str) -> str:
            return f"config key '{self.section}.{name}'"

        nm = tuple(self.n_movements) if isinstance(self.n_movements, Sequence) else ()
        if (len(nm) != 2 or not all(isinstance(n, (int, np.integer)) for n in nm)
                or not 0 <= nm[0] <= nm[1] <= LIMITS["n_movements"]):
            raise GenbrainInputError(f"{key('n_movements')}: expected [lo, hi] integers with "
                                     f"0 <= lo <= hi <= {LIMITS['n_movements']}, "
                                     f"got {self.n_movements}")
        object.__setattr__(self, "n_movements", (int(nm[0]), int(nm[1])))
        for name in ("rotation_lambda", "translation_lambda"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise GenbrainInputError(f"{key(name)}: expected a Poisson mean >= 0, got {v}")
        for name, unit in (("max_rotation", "degrees"), ("max_translation", "mm")):
            v = getattr(self, name)
            if not (np.isfinite(v) and 0 <= v <= LIMITS[name]):
                raise GenbrainInputError(f"{key(name)}: expected 0..{LIMITS[name]:g} {unit} (the "
                                         f"paper's bound), got {v}")
        sig = np.atleast_1d(np.asarray(self.sigmas, dtype=np.float64))
        if sig.ndim != 1 or sig.size == 0 or not np.all(np.isfinite(sig)) or np.any(sig < 0):
            raise GenbrainInputError(f"{key('sigmas')}: expected a non-empty list of noise "
                                     f"standard deviations >= 0, got {self.sigmas}")
        object.__setattr__(self, "sigmas", tuple(float(s) for s in sig))
        if not (np.isfinite(self.noise_scale) and self.noise_scale > 0):
            raise GenbrainInputError(f"{key('noise_scale')}: expected a number > 0, got "
                                     f"{self.noise_scale}")
        if self.interpolation not in INTERPOLATIONS:
            raise GenbrainInputError(f"{key('interpolation')}: expected one of {INTERPOLATIONS}, "
                                     f"got '{self.interpolation}'")

    @classmethod
    def from_config(cls, config: Mapping | None, section: str = "corrupt") -> CorruptionSettings:
        """Settings from a config mapping (the ``corrupt`` section); unknown keys are refused
        with a "did you mean"."""
        config = dict(config or {})
        allowed = sorted(f.name for f in fields(cls) if f.name != "section")
        for k in config:
            if k not in allowed:
                hint = difflib.get_close_matches(k, allowed, n=1)
                did = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise GenbrainInputError(f"config: unknown key '{k}' under '{section}'{did}; "
                                         f"expected one of {allowed}")
        if "n_movements" in config:
            config["n_movements"] = tuple(config["n_movements"])
        if "sigmas" in config:
            config["sigmas"] = tuple(np.atleast_1d(config["sigmas"]).tolist())
        return cls(**config, section=section)


@dataclass(frozen=True)
class Corruption:
    """The corruption drawn for one image.

    Attributes:
        image_id: the image's identifier (seeds its random stream).
        seed: the base seed it was drawn with.
        times: (n,) movement times, fractions of k-space along z, increasing.
        rotations: (n, 3) rotations about x, y, z (degrees).
        translations: (n, 3) translations along x, y, z (mm).
        sigma_gaussian, sigma_rician: noise levels drawn (raw units, before ``noise_scale``).
        noise_scale: the multiplier the noise was applied with.
    """

    image_id: str
    seed: int
    times: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    sigma_gaussian: float
    sigma_rician: float
    noise_scale: float = 1.0

    @property
    def n_movements(self) -> int:
        return len(self.times)

    def row(self) -> dict:
        """One row of the corruption table (:data:`TABLE_COLUMNS`); arrays as ';'-joined
        numbers (rotations and translations per movement as x,y,z)."""
        def vecs(a: np.ndarray) -> str:
            return ";".join(",".join(f"{v:g}" for v in r) for r in a)

        return {
            "image_id": self.image_id, "seed": self.seed, "n_movements": self.n_movements,
            "times": ";".join(f"{t:.4f}" for t in self.times),
            "rotations_deg": vecs(self.rotations), "translations_mm": vecs(self.translations),
            "max_abs_rotation_deg": float(np.abs(self.rotations).max(initial=0.0)),
            "max_abs_translation_mm": float(np.abs(self.translations).max(initial=0.0)),
            "sigma_gaussian": self.sigma_gaussian, "sigma_rician": self.sigma_rician,
            "noise_scale": self.noise_scale,
        }


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """The random stream of one image: ``default_rng([seed, name_seed(image_id)])``."""
    return np.random.default_rng([int(seed), name_seed(image_id)])


def _signed_poisson(rng: np.random.Generator, lam: float, bound: float,
                    shape: tuple[int, ...]) -> np.ndarray:
    mag = rng.poisson(lam, size=shape).astype(np.float64)
    sign = rng.choice(np.array([-1.0, 1.0]), size=shape)
    return np.clip(sign * mag, -bound, bound)


def draw_corruption(settings: CorruptionSettings, image_id: str,
                    rng: np.random.Generator | None = None) -> Corruption:
    """Draw one image's motion and noise parameters (see the module docstring).

    ``rng`` defaults to :func:`image_rng` (settings.seed, image_id); :func:`corrupt_volume`
    continues the same stream for the noise fields."""
    rng = image_rng(settings.seed, image_id) if rng is None else rng
    lo, hi = settings.n_movements
    n = int(rng.integers(lo, hi + 1))
    times = np.sort(rng.uniform(0.0, 1.0, size=n))
    rot = _signed_poisson(rng, settings.rotation_lambda, settings.max_rotation, (n, 3))
    trans = _signed_poisson(rng, settings.translation_lambda, settings.max_translation, (n, 3))
    sig = np.asarray(settings.sigmas)
    s_g, s_r = (float(v) for v in rng.choice(sig, size=2))
    return Corruption(str(image_id), int(settings.seed), times, rot, trans, s_g, s_r,
                      float(settings.noise_scale))


def apply_motion(volume: np.ndarray, rotations: np.ndarray, translations: np.ndarray,
                 times: np.ndarray, affine: np.ndarray | None = None,
                 interpolation: str = "linear") -> np.ndarray:
    """k-space rigid-motion artefact (TorchIO ``Motion``) on one 3D volume.

    volume: (X, Y, Z) intensities; rotations, translations: (n, 3) degrees / mm; times: (n,)
    fractions of k-space in (0, 1); affine: voxel-to-mm matrix (default: the 2 mm MNI grid).
    Returns a float32 (X, Y, Z) volume; with n = 0 a float32 copy of the input.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    rotations = np.asarray(rotations, np.float64).reshape(-1, 3)
    translations = np.asarray(translations, np.float64).reshape(-1, 3)
    times = np.asarray(times, np.float64).reshape(-1)
    if not len(rotations) == len(translations) == len(times):
        raise ValueError("rotations, translations and times need one entry per movement")
    if len(times) == 0:
        return vol.copy()
    if np.any(np.diff(times) < 0) or times.min() < 0 or times.max() > 1:
        raise ValueError(f"movement times must be increasing in [0, 1], got {times}")
    # imported here: torchio's import costs ~3 s and only the corruption rule needs it
    import torch
    import torchio as tio

    affine = standard_space().affine if affine is None else np.asarray(affine, np.float64)
    image = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(vol))[None],
                            affine=affine)
    motion = tio.Motion(degrees=rotations, translation=translations, times=times,
                        image_interpolation=interpolation)
    return motion(image).data[0].numpy().astype(np.float32, copy=False)


def add_noise(volume: np.ndarray, sigma_gaussian: float, sigma_rician: float,
              rng: np.random.Generator) -> np.ndarray:
    """Gaussian then Rician noise (module docstring) on any-shaped raw intensities ->
    float32 array of the same shape; a sigma of 0 skips that component (and its draws)."""
    x = np.asarray(volume, dtype=np.float64)
    if sigma_gaussian < 0 or sigma_rician < 0:
        raise ValueError("noise standard deviations must be >= 0")
    if sigma_gaussian > 0:
        x = x + sigma_gaussian * rng.standard_normal(x.shape)
    if sigma_rician > 0:
        real = x + sigma_rician * rng.standard_normal(x.shape)
        imag = sigma_rician * rng.standard_normal(x.shape)
        x = np.hypot(real, imag)
    return x.astype(np.float32)


def corrupt_volume(volume: np.ndarray, settings: CorruptionSettings, image_id: str,
                   affine: np.ndarray | None = None) -> tuple[np.ndarray, Corruption]:
    """Corrupt one raw (X, Y, Z) volume -> (float32 corrupted volume, the parameters drawn).

    Deterministic in (settings, image_id): motion first, then noise (scaled by
    ``settings.noise_scale``), all from :func:`image_rng`."""
    rng = image_rng(settings.seed, image_id)
    c = draw_corruption(settings, image_id, rng)
    out = apply_motion(volume, c.rotations, c.translations, c.times, affine,
                       settings.interpolation)
    out = add_noise(out, c.sigma_gaussian * c.noise_scale, c.sigma_rician * c.noise_scale, rng)
    return out, c


def corrupt_vectors(vectors: np.ndarray, image_ids: Sequence[str], settings: CorruptionSettings,
                    space: StandardSpace | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Corrupt raw voxel vectors (n, V) of the standard space -> (float32 (n, V), table).

    Each vector is scattered to the 91x109x91 grid with zeros outside the brain mask (images
    are skull-stripped), corrupted there, and gathered back, so motion moves the brain edge
    and ghosts it into the brain. The table has one row per image (:data:`TABLE_COLUMNS`)."""
    space = standard_space() if space is None else space
    x = np.asarray(vectors)
    if x.ndim == 1:
        x = x[None]
    ids = [str(i) for i in image_ids]
    if len(ids) != len(x):
        raise GenbrainInputError(f"corrupt: {len(x)} images but {len(ids)} image ids")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise GenbrainInputError(f"corrupt: image id '{dup}' occurs twice; every image needs "
                                 "its own id (it seeds the image's corruption)")
    if x.shape[1] != space.n_voxels:
        raise GenbrainInputError(f"corrupt: expected voxel vectors of length {space.n_voxels}, "
                                 f"got {x.shape[1]}")
    out = np.empty(x.shape, dtype=np.float32)
    rows = []
    for i, image_id in enumerate(ids):
        vol, c = corrupt_volume(space.to_volume(x[i].astype(np.float32)), settings, image_id,
                                space.affine)
        out[i] = space.to_vector(vol)
        rows.append(c.row())
    return out, pd.DataFrame(rows, columns=TABLE_COLUMNS)
