"""Registration backends: native space -> MNI152NLin6Asym 2 mm.

- ``ants`` (default, antspyx): affine + SyN of the registration modality (T1w) to the 2 mm
  template; every modality of the subject is resampled with the same transforms; the Jacobian
  determinant of the nonlinear warp is returned. A brain-extracted T1w is registered to the
  brain-masked template; a whole-head T1w (the usual raw input) to the whole-head template, head
  to head, and masked afterwards (see :func:`register_ants` for why, with the measurement).
- ``fsl`` (when FSL is installed): flirt (12 dof) + fnirt (``T1_2_MNI152_2mm`` config) +
  applywarp, through fslpy's wrappers, like the UK Biobank pipeline.

Both return :class:`Registered`: standard-grid volumes plus the affine part of the transform as a
4x4 matrix mapping standard-space points (RAS mm) to native points (RAS mm).
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from genbrain.errors import GenbrainInputError
from genbrain.space import SPACE_NAME, standard_space, template_paths

BACKENDS = ("ants", "fsl")
# ITK stores physical points in LPS; NIfTI/nibabel world coordinates are RAS.
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Registered:
    """Result of registering one subject.

    volumes: modality -> (91,109,91) float32 volume on the standard grid.
    std_to_native: 4x4 affine part of the transform, standard RAS mm -> native RAS mm.
    jacobian: (91,109,91) Jacobian determinant of the nonlinear warp, or None.
    """

    volumes: dict[str, np.ndarray]
    std_to_native: np.ndarray
    jacobian: np.ndarray | None


@functools.lru_cache(maxsize=2)
def _ants_template(head: bool = False):
    """The 2 mm T1w template as an ANTs image: whole head, or multiplied by its brain mask."""
    import ants

    paths = template_paths()
    t1 = ants.image_read(str(paths["T1w"]))
    if head:
        return t1
    mask = ants.image_read(str(paths["mask"]))
    return t1 * mask


def itk_affine_to_ras(matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """An ITK affine (LPS points, fixed -> moving) as a 4x4 RAS matrix (fixed -> moving)."""
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = offset
    return _LPS @ lps @ _LPS


def register_ants(moving: Mapping[str, str], reference: str, options: Mapping | None = None,
                  seed: int = 0, threads: int = 1, *, brain_extracted: bool = False
                  ) -> Registered:
    """Register ``moving[reference]`` to the 2 mm template with antspyx and resample every image
    in ``moving`` (modality -> NIfTI path) with the same transforms.

    brain_extracted: whether ``moving[reference]`` is brain-extracted (registered to the
    brain-masked template) or a whole-head image (registered to the whole-head template, head
    to head; the brain mask is applied afterwards, on the standard grid).
    options: ``type_of_transform`` (default ``SyN``; ``Affine`` for affine only) and any other
    ``ants.registration`` keyword (e.g. ``reg_iterations``).
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, int(threads)))
    import ants

    opts = {"type_of_transform": "SyN", **dict(options or {})}
    fixed = _ants_template(head=not brain_extracted)
    images = {}
    for modality, path in moving.items():
        try:
            images[modality] = ants.image_read(str(path))
        except Exception as err:  # antspyx raises bare exceptions on unreadable files
            raise GenbrainInputError(f"{path}: cannot read image for registration ({err})") from err
    if reference not in images:
        raise GenbrainInputError(f"registration modality '{reference}' is not among the "
                                 f"subject's images {sorted(images)}")
    with tempfile.TemporaryDirectory(prefix="genbrain-ants-") as tmp:
        reg = ants.registration(fixed, images[reference], random_seed=int(seed),
                                outprefix=str(Path(tmp) / "reg_"), **opts)
        fwd = reg["fwdtransforms"]
        volumes = {
            m: ants.apply_transforms(fixed, img, transformlist=fwd, interpolator="linear")
            .numpy().astype(np.float32)
            for m, img in images.items()
        }
        affine_files = [f for f in fwd if f.endswith(".mat")]
        tx = ants.read_transform(affine_files[0])
        params = np.asarray(tx.parameters, dtype=float)
        centre = np.asarray(tx.fixed_parameters, dtype=float)
        mat = params[:9].reshape(3, 3)
        trans = params[9:12]
        offset = trans + centre - mat @ centre
        std_to_native = itk_affine_to_ras(mat, offset)
        warp_files = [f for f in fwd if f.endswith("Warp.nii.gz")]
        jac = None
        if warp_files:
            jac = ants.create_jacobian_determinant_image(fixed, warp_files[0]).numpy()
            jac = jac.astype(np.float32)
    return Registered(volumes=volumes, std_to_native=std_to_native, jacobian=jac)


def fsl_commands(moving: Mapping[str, str], reference: str, workdir: str | os.PathLike,
                 options: Mapping | None = None, *, brain_extracted: bool = False
                 ) -> list[list[str]]:
    """The FSL command lines (flirt, fnirt, one applywarp per modality) for one subject, built
    with fslpy's wrappers (requires ``$FSLDIR``). flirt goes to the brain-extracted template
    for a brain-extracted image and to the whole-head template otherwise; fnirt always works
    on the whole-head template with the dilated brain mask as its reference mask, as in the
    UK Biobank pipeline."""
    from fsl.wrappers import applywarp, flirt, fnirt

    opts = dict(options or {})
    work = Path(workdir)
    fsldir = os.environ.get("FSLDIR")
    if not fsldir:
        raise GenbrainInputError("preprocess.backend 'fsl' needs FSL: $FSLDIR is not set "
                                 "(use backend 'ants', the default)")
    std = Path(fsldir) / "data" / "standard"
    ref_brain = str(std / "MNI152_T1_2mm_brain.nii.gz")
    ref_head = str(std / "MNI152_T1_2mm.nii.gz")
    ref_mask = str(std / "MNI152_T1_2mm_brain_mask_dil.nii.gz")
    aff, warp, jac = str(work / "affine.mat"), str(work / "warp"), str(work / "jacobian")
    cmds = [
        flirt(moving[reference], ref_brain if brain_extracted else ref_head, omat=aff,
              dof=int(opts.get("dof", 12)), cmdonly=True),
        fnirt(moving[reference], ref=ref_head, aff=aff, cout=warp, jout=jac, refmask=ref_mask,
              config=opts.get("fnirt_config", "T1_2_MNI152_2mm"), cmdonly=True),
    ]
    for modality, path in moving.items():
        cmds.append(applywarp(path, ref_brain, str(work / f"{modality}.nii.gz"), warp=warp,
                              interp=opts.get("interp", "spline"), cmdonly=True))
    return cmds


def register_fsl(moving: Mapping[str, str], reference: str, options: Mapping | None = None,
                 seed: int = 0, threads: int = 1, *, brain_extracted: bool = False
                 ) -> Registered:
    """Register with FSL (flirt + fnirt + applywarp); see :func:`fsl_commands`."""
    with tempfile.TemporaryDirectory(prefix="genbrain-fsl-") as tmp:
        for cmd in fsl_commands(moving, reference, tmp, options,
                                brain_extracted=brain_extracted):
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise GenbrainInputError(f"{moving[reference]}: {Path(cmd[0]).name} failed "
                                         f"({res.stderr.strip().splitlines()[-1:]})")
        volumes = {m: np.asanyarray(nib.load(Path(tmp) / f"{m}.nii.gz").dataobj)
                   .astype(np.float32) for m in moving}
        jac = np.asanyarray(nib.load(Path(tmp) / "jacobian.nii.gz").dataobj).astype(np.float32)
        # flirt's matrix maps source to reference in FSL scaled-voxel coordinates; convert it
        from fsl.data.image import Image
        from fsl.transform.flirt import fromFlirt

        src = Image(moving[reference])
        ref = Image(str(Path(os.environ["FSLDIR"]) / "data/standard/MNI152_T1_2mm_brain.nii.gz"))
        native_to_std = fromFlirt(np.loadtxt(Path(tmp) / "affine.mat"), src, ref, "world", "world")
    return Registered(volumes=volumes, std_to_native=np.linalg.inv(native_to_std), jacobian=jac)


def register(backend: str, moving: Mapping[str, str], reference: str,
             options: Mapping | None = None, seed: int = 0, threads: int = 1, *,
             brain_extracted: bool = False) -> Registered:
    """Dispatch to a backend by name (``ants`` or ``fsl``); ``brain_extracted`` says whether
    ``moving[reference]`` is brain-extracted or a whole-head image."""
    if backend == "ants":
        return register_ants(moving, reference, options, seed, threads,
                             brain_extracted=brain_extracted)
    if backend == "fsl":
        return register_fsl(moving, reference, options, seed, threads,
                            brain_extracted=brain_extracted)
    raise GenbrainInputError(f"config key 'preprocess.backend': expected one of {BACKENDS}, "
                             f"got '{backend}'")


def resample_to_standard(img: nib.Nifti1Image, data: np.ndarray, path: str) -> np.ndarray:
    """Resample an axis-aligned standard-space image (e.g. MNI 1 mm) onto the 2 mm grid.

    Refuses, naming ``path``, an image whose affine is rotated/sheared or whose field of view
    does not cover the brain mask: such an image is not in standard space and must be
    registered (list its site under ``native_sites``).
    """
    from scipy import ndimage as ndi

    space = standard_space()
    lin = img.affine[:3, :3]
    if not np.allclose(lin - np.diag(np.diag(lin)), 0, atol=1e-3):
        raise GenbrainInputError(
            f"{path}: expected an image in {SPACE_NAME} space on an axis-aligned grid, got a "
            "rotated/sheared affine; list its site under 'native_sites' to register it"
        )
    to_src = np.linalg.inv(img.affine) @ space.affine
    ijk = space.voxel_indices.astype(np.float64)
    vox = to_src[:3, :3] @ ijk + to_src[:3, 3:4]
    shape = np.array(data.shape)[:, None]
    outside = ((vox < -0.5) | (vox > shape - 0.5)).any(axis=0).mean()
    if outside > 0.01:
        raise GenbrainInputError(
            f"{path}: grid {tuple(data.shape)} with voxel size "
            f"{tuple(np.round(np.abs(np.diag(lin)), 2))} does not cover the {SPACE_NAME} brain "
            f"mask ({outside:.0%} of it outside); expected a standard-space image, or list its "
            "site under 'native_sites'"
        )
    out = np.zeros(space.shape, np.float32)
    out[space.mask] = ndi.map_coordinates(data, vox, order=1, mode="nearest")
    return out

