"""Simulated multi-site cohorts with known ground truth (the embedded default).

A subject is generated in standard space as voxel vectors, then written as NIfTI either on the
standard 2 mm grid or, for *native* sites, on a site-specific grid (other voxel size and field of
view) after a random head pose and size (an affine recorded as ground truth), so that
preprocessing has real registration work to do.

Generative model (per subject, all in-mask voxels):
- anatomy: ICBM GM/WM priors sampled through a smooth random displacement field (~1.5 mm);
- grey matter: multiplicative regional effects of age (fronto-temporal + hippocampus, loss with
  age), sex (signed regions) and diagnosis (temporo-insular, medial frontal, thalamic loss);
  CSF = 1 - GM - WM, so atrophy enlarges CSF spaces and ventricles;
- modalities: T1w and FLAIR are tissue mixtures (FLAIR gets age-related periventricular
  hyperintensities), VBM is the modulated GM, FA follows WM (declines with age; the clinical
  score adds a left perisylvian lesion), ADC (``ADC``, mm^2/s: free water in CSF, tissue
  diffusivity rising with age; the clinical score's lesion restricts diffusion there, the acute
  stroke picture; not in the default registry: a config declares it as a new modality), three
  seed-based FC maps are network maps whose subject
  strength varies with age and individually, and two task contrasts are linear functions of the
  FC maps plus regional activation, so rest -> task synthesis is learnable;
- sites: intensity scale, smooth bias field, noise level, smoothness and a VBM offset.

Every random draw comes from ``numpy.random.default_rng([seed, name_seed(cohort),
name_seed(site), i])`` (:func:`genbrain.seeds.name_seed`), so a subject is identical whichever
chunk or process generates it.

Ground truth: per modality, the exact noise-free change of the image per year of age, male minus
female, patient minus control and per unit of score (finite differences of the generator with
noise and deformation switched off), in the modality's raw units.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from genbrain.anatomy import REGIONS, anatomy
from genbrain.errors import GenbrainInputError
from genbrain.seeds import name_seed
from genbrain.space import standard_space, template_t1

FUNCTIONAL = ("fc01", "fc02", "fc03", "task_shapes", "task_faces")  # built on the FC maps
KINDS = ("population", "disorder", "clinical")
EFFECTS = ("age", "sex", "diagnosis", "score")
#: the atlas regions a disorder's grey-matter loss may hit (``simulate.disease_regions``):
#: its own temporo-insular / medial frontal / thalamic regions (the default), or the regions
#: of the age effect, i.e. a disease that looks like accelerated ageing of the same regions,
#: an axis the healthy pretraining population varies along (issue 28's prior experiment)
DISEASE_REGIONS = ("disease_gm", "age_gm")


@dataclass(frozen=True)
class SiteSpec:
    """One simulated site.

    n: subjects; native: write on a site-specific grid after a random head pose;
    voxel_size: native voxel size (mm); scale, bias, noise, fwhm, vbm_offset: acquisition
    effects (intensity scale, bias-field amplitude, noise sd relative to WM intensity,
    smoothing FWHM in mm, additive GM offset); disease_scale: the site's disease effect as a
    multiple of the cohort's (1: the population's; -1: a discordant site whose patients
    differ in the opposite direction, the paper's MDD site S8; 0: none); brain_extracted: a
    native site's T1w is written brain-extracted instead of with the template's scalp and skull
    around the brain (the usual raw input, see :func:`with_head`).
    """

    name: str
    n: int
    native: bool
    voxel_size: tuple[float, float, float]
    scale: float
    bias: float
    noise: float
    fwhm: float
    vbm_offset: float
    disease_scale: float = 1.0
    brain_extracted: bool = False


def site_specs(cohort: str, spec: Mapping, seed: int) -> list[SiteSpec]:
    """Site parameters: those given in ``spec['sites'][name]``, the rest drawn from the seed."""
    out = []
    for name, s in spec["sites"].items():
        rng = np.random.default_rng([seed, name_seed(cohort), name_seed(name), 2**31 - 1])
        drawn = {
            "scale": float(rng.uniform(0.8, 1.25)),
            "bias": float(rng.uniform(0.0, 0.12)),
            "noise": float(rng.uniform(0.01, 0.04)),
            "fwhm": float(rng.choice([0.0, 0.0, 2.0, 3.0])),
            "vbm_offset": float(rng.uniform(-0.03, 0.03)),
        }
        drawn.update({k: float(v) for k, v in s.items() if k in drawn})
        vs = tuple(float(v) for v in s.get("voxel_size", (1.5, 1.5, 1.5)))
        out.append(SiteSpec(name=name, n=int(s["n"]), native=bool(s.get("native", False)),
                            voxel_size=vs, **drawn,
                            disease_scale=float(s.get("disease_scale", 1.0)),
                            brain_extracted=bool(s.get("brain_extracted", False))))
    return out


def with_head(t1: np.ndarray, site: SiteSpec) -> np.ndarray:
    """A simulated (91,109,91) T1w with the MNI152 template's scalp and skull (its whole-head
    T1w outside the brain mask) at the site's intensity scale: a whole-head raw image, for
    native sites that are not brain-extracted."""
    outside = template_t1() * ~standard_space().mask
    return (t1 + site.scale * outside).astype(t1.dtype)


def participants(cohort: str, spec: Mapping, seed: int) -> pd.DataFrame:
    """The participants table of a simulated cohort (BIDS participants.tsv columns).

    Cheap and deterministic: the workflow calls it at parse time to plan the chunks.
    Columns: participant_id, site, age, sex (M/F), diagnosis, and ``score`` for clinical cohorts.
    """
    kind = spec["kind"]
    if kind not in KINDS:
        raise GenbrainInputError(f"config key 'cohorts.{cohort}.simulate.kind': expected one of "
                                 f"{KINDS}, got '{kind}'")
    lo, hi = spec.get("age", (45.0, 82.0))
    rows = []
    for site in site_specs(cohort, spec, seed):
        rng = np.random.default_rng([seed, name_seed(cohort), name_seed(site.name), 2**31 - 2])
        frac = float(spec.get("patient_fraction", 0.5)) if kind == "disorder" else 0.0
        for i in range(site.n):
            age = round(float(rng.uniform(lo, hi)), 1)
            sex = "M" if rng.random() < 0.5 else "F"
            row = {"participant_id": f"sub-{site.name}{i + 1:04d}", "site": site.name,
                   "age": age, "sex": sex}
            if kind == "disorder":
                row["diagnosis"] = spec.get("patient_label", "SCZ") if rng.random() < frac else "CN"
            elif kind == "clinical":
                row["diagnosis"] = spec.get("patient_label", "stroke")
                row["score"] = round(float(np.clip(rng.gamma(2.0, 5.0), 0, 42)), 1)
            else:
                row["diagnosis"] = "CN"
            rows.append(row)
    return pd.DataFrame(rows)


@functools.cache
def mask_box(margin: int = 0) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The brain mask's bounding box grown by ``margin`` voxels (clamped to the grid) as slices,
    and the flat (C-order) indices of the mask voxels inside that box, in vector order.

    Every simulated volume is zero outside the mask, so a computation whose reach is at most
    ``margin`` voxels gives the same in-mask values on the box as on the whole grid: the box
    (72 x 90 x 77 at margin 0) holds 55% of the 91 x 109 x 91 voxels.
    """
    space = standard_space()
    nz = np.nonzero(space.mask)
    box = tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n))
                for i, n in zip(nz, space.shape))
    flat = np.flatnonzero(space.mask[box])
    flat.setflags(write=False)
    return box, flat


@functools.lru_cache(maxsize=1)
def _mask_flat() -> np.ndarray:
    """Flat (C-order) indices of the mask voxels on the whole grid, in vector order."""
    flat = np.flatnonzero(standard_space().mask)
    flat.setflags(write=False)
    return flat


def to_volume(vector: np.ndarray) -> np.ndarray:
    """(V,) in-mask vector -> (91,109,91) volume, zero outside: the same array as
    ``standard_space().to_volume(vector)``, scattered by flat index (~50x faster than the
    boolean-mask assignment, which walks all 902,629 voxels)."""
    out = np.zeros(standard_space().shape, dtype=vector.dtype)
    out.reshape(-1)[_mask_flat()] = vector
    return out


def smooth(vector: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (``sigma`` in voxels) of an in-mask (V,) vector: the in-mask values of
    ``ndi.gaussian_filter(to_volume(vector), sigma)`` (mode 'reflect', truncate 4), computed
    on the mask's bounding box grown by the kernel radius. Bitwise the same: the filter is
    separable and each output voxel is the same weighted sum; the voxels it reads beyond the
    box are zero on the whole grid, and the box's own border slabs (zero too) are what the
    reflection reads instead."""
    box, flat = mask_box(int(4.0 * sigma + 0.5))  # scipy's radius at truncate=4
    shape = tuple(s.stop - s.start for s in box)
    vol = np.zeros(shape, dtype=vector.dtype)
    vol.reshape(-1)[flat] = vector
    return ndi.gaussian_filter(vol, sigma).reshape(-1)[flat]


class _Fields:
    """Smooth random fields: Gaussian noise on a coarse grid, interpolated to the in-mask
    voxels with separable Gaussian-kernel weights (three small matrix products per batch,
    ~10x cheaper than spline interpolation at every voxel). The products run over the mask's
    bounding box only (same einsum kernels, so the same values as on the whole grid)."""

    def __init__(self, coarse: tuple[int, int, int] = (10, 12, 10), width: float = 0.7):
        space = standard_space()
        self.coarse = coarse
        self.mask = space.mask
        self.box, self.flat = mask_box(0)
        self.axes = []
        for n_fine, n_coarse, rows in zip(space.shape, coarse, self.box):
            x = np.linspace(0, n_coarse - 1, n_fine)[:, None]
            w = np.exp(-0.5 * ((x - np.arange(n_coarse)[None, :]) / width) ** 2)
            w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
            # rows outside the box only ever multiply into voxels outside the mask
            self.axes.append(np.ascontiguousarray(w[rows]))
        # scale so that fields have unit standard deviation inside the brain on average
        probe = self._interp(np.random.default_rng(0).standard_normal((64, *coarse)))
        self.scale = np.float32(1.0 / probe.std())

    def _interp(self, g: np.ndarray) -> np.ndarray:
        """(n, *coarse) coarse noise -> (n, V) in-mask fields (unscaled)."""
        ax, ay, az = self.axes
        vol = np.einsum("nijk,ai->najk", g.astype(np.float32), ax)  # (n, X, 12, 10) box rows
        vol = np.einsum("najk,bj->nabk", vol, ay)  # (n, X, Y, 10)
        vol = np.einsum("nabk,ck->nabc", vol, az)  # (n, X, Y, Z)
        return vol.reshape(vol.shape[0], -1)[:, self.flat]

    def sample(self, rng: np.random.Generator, n: int = 1,
               rows: Sequence[int] | None = None) -> np.ndarray:
        """(n, V) float32 fields with unit standard deviation. With ``rows``, all n are drawn
        (the random stream moves on as without) but only those rows are interpolated, the
        others left zero: each field's values do not depend on the others in the batch."""
        g = rng.standard_normal((n, *self.coarse)).astype(np.float32)
        if rows is None:
            return self._interp(g) * self.scale
        out = np.zeros((n, len(self.flat)), dtype=np.float32)
        rows = list(rows)
        out[rows] = self._interp(g[rows]) * self.scale
        return out


class Generator:
    """Turns a participants row into raw standard-space voxel vectors per modality."""

    def __init__(self, kind: str, disease_effect: float = 0.10, lesion_effect: float = 0.25,
                 disease_regions: str = "disease_gm"):
        if disease_regions not in DISEASE_REGIONS:
            raise GenbrainInputError(f"simulate.disease_regions is '{disease_regions}'; expected "
                                     f"one of {', '.join(DISEASE_REGIONS)}")
        space = standard_space()
        anat = anatomy()
        self.space = space
        self.kind = kind
        self.disease_effect = disease_effect
        self.lesion_effect = lesion_effect
        self.fields = _Fields()
        self.gm = anat.gm
        self.wm = anat.wm
        self.ijk = space.voxel_indices.astype(np.float32)
        v = space.to_vector
        self.w = {
            "age": v(anat.region(REGIONS["age_gm"], 8.0)),
            "sex": v(anat.region(REGIONS["sex_pos"], 8.0) - anat.region(REGIONS["sex_neg"], 8.0)),
            "disease": v(anat.region(REGIONS[disease_regions], 8.0)),
            "wmh": v(anat.region(REGIONS["ventricles"], 14.0)),
            "lesion": v(anat.region(REGIONS["lesion"], 16.0)),
            "dmn": v(anat.region(REGIONS["net_dmn"], 8.0)),
            "visual": v(anat.region(REGIONS["net_visual"], 8.0)),
            "motor": v(anat.region(REGIONS["net_motor"], 8.0)),
            "faces": v(anat.region(REGIONS["task_faces"], 8.0)),
            "shapes": v(anat.region(REGIONS["task_shapes"], 8.0)),
        }
        # slowly varying multiplicative bias-field basis (per site)
        self.gm_v = v(self.gm)
        self.wm_v = v(self.wm)

    @classmethod
    def from_spec(cls, spec: Mapping) -> Generator:
        """The generator of a cohort's ``simulate`` spec (its kind, disease_effect,
        lesion_effect and disease_regions; the defaults where a key is absent)."""
        return cls(spec["kind"], float(spec.get("disease_effect", 0.10)),
                   float(spec.get("lesion_effect", 0.25)),
                   str(spec.get("disease_regions", "disease_gm")))

    def subject(self, row: Mapping, site: SiteSpec | None, rng: np.random.Generator | None,
                modalities: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw (V,) float32 vectors for ``modalities``. ``rng=None`` gives the noise-free,
        undeformed mean subject for the row's covariates (used for the ground truth)."""
        age_c = (float(row["age"]) - 60.0) / 10.0
        sex = 0.5 if row["sex"] == "M" else -0.5
        dis = 1.0 if row.get("diagnosis") not in (None, "CN") and self.kind == "disorder" else 0.0
        if site is not None:  # the ground truth (no site) is the population's effect
            dis *= site.disease_scale
        score = float(row.get("score", 0.0) or 0.0) if self.kind == "clinical" else 0.0
        w = self.w
        if rng is not None:
            disp = self.fields.sample(rng, 3) * 0.5  # (3, V) voxels, ~1 mm
            coords = self.ijk + disp
            gm = ndi.map_coordinates(self.gm, coords, order=1)
            wm = ndi.map_coordinates(self.wm, coords, order=1)
            # (4, V) individual spatial variation: of grey matter, FA, and the FC maps (two)
            indiv = self.fields.sample(rng, 4, rows=_indiv_rows(modalities))
            subj = rng.standard_normal(6)
        else:
            gm, wm = self.gm_v.copy(), self.wm_v.copy()
            indiv = np.zeros((4, self.space.n_voxels), np.float32)
            subj = np.zeros(6)
        gm = gm * (1.0 - 0.06 * age_c * w["age"] - 0.015 * age_c + 0.05 * sex * w["sex"]
                   - self.disease_effect * dis * w["disease"] + 0.04 * indiv[0])
        wm = wm * (1.0 - 0.02 * age_c + 0.02 * sex)
        gm = np.clip(gm, 0.0, 1.0)
        wm = np.clip(wm, 0.0, 1.0 - gm)
        csf = 1.0 - gm - wm
        out: dict[str, np.ndarray] = {}
        if "T1w" in modalities:
            out["T1w"] = 0.30 * csf + 0.62 * gm + 0.95 * wm
        if "FLAIR" in modalities:
            wmh = 0.35 * max(age_c + 1.0, 0.0) * w["wmh"] * wm
            out["FLAIR"] = 0.10 * csf + 0.75 * gm + 0.55 * wm + wmh
        if "VBM" in modalities:
            out["VBM"] = gm.copy()
        if "FA" in modalities:
            lesion = self.lesion_effect * (score / 20.0) * w["lesion"]
            out["FA"] = (0.12 + 0.55 * wm**1.5 * (1.0 - 0.04 * age_c) - lesion * wm
                         + 0.01 * indiv[1])
        if "ADC" in modalities:
            # acute ischaemia restricts diffusion in the lesion's tissue: -25% at the lesion's
            # core at score 20 with lesion_effect 0.25 (clinical ADC drops are 30-60%)
            lesion = self.lesion_effect * (score / 20.0) * w["lesion"]
            tissue = (0.85e-3 * gm + 0.75e-3 * wm) * (1.0 - lesion)
            out["ADC"] = ((3.0e-3 * csf + tissue) * (1.0 + 0.02 * age_c)
                          + 0.02e-3 * indiv[1])
        if not any(m in modalities for m in FUNCTIONAL):
            return {k: v.astype(np.float32) for k, v in out.items()}
        strength = {
            "dmn": 0.55 * (1.0 - 0.05 * age_c) * np.exp(0.2 * subj[0]),
            "visual": 0.50 * np.exp(0.2 * subj[1]),
            "motor": 0.45 * (1.0 + 0.05 * sex) * np.exp(0.2 * subj[2]),
        }
        tissue = 0.3 + 0.7 * gm
        fc = {
            net: 0.05 + strength[net] * w[net] * tissue + 0.04 * indiv[2 + (k % 2)] * w[net]
            for k, net in enumerate(("dmn", "visual", "motor"))
        }
        for name, net in (("fc01", "dmn"), ("fc02", "visual"), ("fc03", "motor")):
            if name in modalities:
                out[name] = fc[net]
        if "task_shapes" in modalities:
            out["task_shapes"] = (10.0 * fc["visual"] + 4.0 * fc["motor"]
                                  + 4.0 * np.exp(0.2 * subj[3]) * w["shapes"] * tissue)
        if "task_faces" in modalities:
            out["task_faces"] = (8.0 * fc["visual"] + 6.0 * fc["dmn"]
                                 + 5.0 * np.exp(0.2 * subj[4]) * w["faces"] * tissue)
        return {k: v.astype(np.float32) for k, v in out.items()}

    def apply_site(self, images: dict[str, np.ndarray], site: SiteSpec,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Acquisition effects: scale, bias field, smoothing, noise, VBM offset."""
        bias = 1.0 + site.bias * self.fields.sample(rng, 1)[0]
        out = {}
        for name, x in images.items():
            if name in ("T1w", "FLAIR"):
                x = x * site.scale * bias
            elif name == "VBM":
                x = np.clip(x + site.vbm_offset * (x > 0.05), 0, 1)
            if site.fwhm > 0:
                x = smooth(x, site.fwhm / 2.3548 / 2.0)
            noise_sd = {"T1w": 1.0, "FLAIR": 1.0, "VBM": 1.0, "FA": 0.6,
                        "ADC": 2.0e-3}.get(name)
            if noise_sd is None:  # FC and task maps: noise relative to their own spread
                noise_sd = float(np.std(x)) * 1.5
            x = x + rng.standard_normal(x.shape).astype(np.float32) * site.noise * noise_sd
            if name in ("VBM", "FA"):
                x = np.clip(x, 0.0, 1.0)
            elif name == "ADC":
                x = np.clip(x, 0.0, 5.0e-3)
            out[name] = x.astype(np.float32)
        return out


def _indiv_rows(modalities: Sequence[str]) -> list[int]:
    """The individual-variation fields a subject's ``modalities`` use: 0 (grey matter, under
    every modality), 1 (FA and ADC), 2 and 3 (the FC maps and the task maps built on them)."""
    rows = [0]
    if "FA" in modalities or "ADC" in modalities:
        rows.append(1)
    if any(m in modalities for m in FUNCTIONAL):
        rows += [2, 3]
    return rows


def subject_rng(seed: int, cohort: str, site: str, index: int) -> np.random.Generator:
    """The per-subject random stream (independent of chunking)."""
    return np.random.default_rng([seed, name_seed(cohort), name_seed(site), index])


def native_pose(rng: np.random.Generator) -> np.ndarray:
    """Random head pose and size: 4x4 affine mapping standard (MNI, mm) to native world (mm).

    Rotations up to 8 degrees about each axis, translations up to 12 mm, isotropic scale
    0.92-1.08 (head size).
    """
    ang = np.deg2rad(rng.uniform(-8, 8, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rz @ ry @ rx * rng.uniform(0.92, 1.08)
    a[:3, 3] = rng.uniform(-12, 12, 3)
    return a


def native_grid(voxel_size: Sequence[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """A native acquisition grid covering a 200 x 236 x 190 mm field of view (RAS)."""
    vs = np.asarray(voxel_size, dtype=float)
    fov = np.array([200.0, 236.0, 190.0])
    shape = tuple(int(np.ceil(f / v)) for f, v in zip(fov, vs))
    aff = np.diag([*vs, 1.0])
    aff[:3, 3] = -fov / 2 + np.array([0.0, -18.0, 12.0])
    return shape, aff


class NativeGrid:
    """A native acquisition grid (``shape``, voxel-to-world ``affine``) and the world
    coordinates (mm) of its voxels, computed once per site instead of once per image."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray):
        self.shape = tuple(shape)
        self.affine = affine
        ijk = np.indices(self.shape, dtype=np.float32).reshape(3, -1)
        self.world = affine[:3, :3] @ ijk + affine[:3, 3:4]  # (3, N) float64

    def resampler(self, pose: np.ndarray,
                  box: tuple[slice, slice, slice] | None = None) -> _NativeResampler:
        """Resampling of standard-space volumes into this grid after ``pose`` (std -> native);
        ``box``: standard-grid slices outside which every volume to resample is zero (the
        native voxels that cannot see the box are then set to zero without interpolation)."""
        to_std_vox = np.linalg.inv(standard_space().affine) @ np.linalg.inv(pose)
        vox = to_std_vox[:3, :3] @ self.world + to_std_vox[:3, 3:4]  # (3, N) standard voxels
        return _NativeResampler(self.shape, vox, box)


class _NativeResampler:
    """Trilinear resampling (``map_coordinates`` order 1, constant 0 outside) at fixed points.

    With a ``box``, only the points whose 2x2x2 neighbourhood can touch the box are
    interpolated: linear weights are non-negative and every voxel they read elsewhere is zero,
    so the other points are exactly 0, and the rest are the same per-point sums as over all
    points (about 45% of a native grid's voxels see the brain)."""

    def __init__(self, shape: tuple[int, ...], vox: np.ndarray,
                 box: tuple[slice, slice, slice] | None):
        self.shape = shape
        self.n = vox.shape[1]
        if box is None:
            self.inside, self.vox = None, vox
        else:
            lo = np.array([s.start - 1 for s in box], dtype=float)[:, None]
            hi = np.array([s.stop for s in box], dtype=float)[:, None]
            self.inside = np.flatnonzero(np.all((vox >= lo) & (vox <= hi), axis=0))
            self.vox = vox[:, self.inside]

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        """(91,109,91) standard-space volume -> float32 volume of the native grid's shape."""
        vals = ndi.map_coordinates(volume, self.vox, order=1, mode="constant", cval=0.0)
        if self.inside is None:
            out = vals
        else:
            out = np.zeros(self.n, dtype=vals.dtype)
            out[self.inside] = vals
        return out.reshape(self.shape).astype(np.float32)


def to_native(volume: np.ndarray, pose: np.ndarray, shape: tuple[int, int, int],
              affine: np.ndarray) -> np.ndarray:
    """Resample a standard-space volume into a native grid, given the pose (std -> native).

    For many volumes of one subject, build ``NativeGrid(shape, affine).resampler(pose, box)``
    once and call it per volume (the same values, without recomputing the coordinates).
    """
    return NativeGrid(shape, affine).resampler(pose)(volume)


#: the covariates around which the ground truth is the change
TRUTH_BASE = {"age": 60.0, "sex": "F", "diagnosis": "CN", "score": 0.0}


def reference_subject(spec: Mapping, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """The noise-free, undeformed, site-free subject at :data:`TRUTH_BASE` whose changes
    :func:`ground_truth` maps: ``{modality: (V,)}`` in raw units. A planted change put through
    a modality's normalisation at this image is the change in the units of an image store
    (:func:`genbrain.finetune.finetune_checks`)."""
    gen = Generator.from_spec(spec)
    return gen.subject(TRUTH_BASE, None, None, modalities)


def ground_truth(cohort: str, spec: Mapping, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """Noise-free effect maps ``{f"{modality}_{effect}": (V,)}`` in raw units.

    age: change per year at age 60; sex: male minus female; diagnosis: patient minus control
    (disorder cohorts); score: change per unit of score at score 0 (clinical cohorts).
    """
    gen = Generator.from_spec(spec)
    base = dict(TRUTH_BASE)
    ref = gen.subject(base, None, None, modalities)
    changes = {"age": {"age": 61.0}, "sex": {"sex": "M"}}
    if spec["kind"] == "disorder":
        changes["diagnosis"] = {"diagnosis": spec.get("patient_label", "SCZ")}
    if spec["kind"] == "clinical":
        changes["score"] = {"score": 1.0}
    out = {}
    for effect, change in changes.items():
        moved = gen.subject({**base, **change}, None, None, modalities)
        for m in modalities:
            out[f"{m}_{effect}"] = moved[m] - ref[m]
    return out
