"""Image stores: many standard-space images as memory-mapped voxel-vector arrays.

Layout of a cohort store (``results/stores/<cohort>/``)::

    index.tsv                          one row per image: participant_id, site, age, sex, ...,
                                       modality, modality_index, shard, row, qc columns
    site-<site>/chunk-<k>/<modality>.npy   (n_images, V) float16/float32, rows in index order

``shard`` paths in the index are relative to the index file, so a store can be moved.
Loading an item is O(1): the index is read once into arrays; an item is one row of its shard,
read with a positioned read (:meth:`ImageStore.rows`, what training batches use) or through a
memory map (``store[i]``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv, save_npy, save_tsv

INDEX_COLUMNS = ("participant_id", "site", "age", "sex", "modality", "modality_index", "shard",
                 "row")


class NpyShard:
    """One C-ordered (N, V) .npy shard read with positioned reads (``os.preadv``) straight into
    the caller's buffer: no memory map, so the pages read stay in the shared page cache and not
    in this process's resident set, and a row costs one copy (a memmap gather costs a page
    fault per 4 KiB page plus the copy). The file is opened lazily, once per process."""

    def __init__(self, path: Path, source: str):
        self.path = path
        if not path.exists():
            raise GenbrainInputError(f"{source}: shard '{path}' listed in the index is missing")
        with open(path, "rb") as fh:
            try:
                major, _ = np.lib.format.read_magic(fh)
                header = (np.lib.format.read_array_header_1_0 if major == 1
                          else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = header(fh)
            except ValueError as err:
                raise GenbrainInputError(f"{path}: not a .npy image shard ({err})") from err
            self.offset = fh.tell()
        if len(shape) != 2 or fortran:
            raise GenbrainInputError(f"{path}: expected a C-ordered (n_images, n_voxels) array, "
                                     f"got shape {shape}{' (Fortran order)' if fortran else ''}")
        self.shape, self.dtype = shape, np.dtype(dtype)
        size = os.path.getsize(path)
        if size < self.offset + shape[0] * shape[1] * self.dtype.itemsize:
            raise GenbrainInputError(f"{path}: truncated shard ({size} bytes for shape {shape})")
        self._fd: int | None = None

    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read(self, rows: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` (len(rows), stop - start) with rows[i][start:stop]; ``rows`` ascending.
        Runs of consecutive full rows are read with one call."""
        item, n_vox = self.dtype.itemsize, self.shape[1]
        full = start == 0 and stop == n_vox
        i = 0
        while i < len(rows):
            j = i + 1
            if full:  # coalesce consecutive rows: one syscall for a contiguous run
                while j < len(rows) and rows[j] == rows[j - 1] + 1:
                    j += 1
            offset = self.offset + (int(rows[i]) * n_vox + start) * item
            view = memoryview(out[i:j]).cast("B")
            got = os.preadv(self.fd(), [view], offset)
            if got != view.nbytes:
                raise GenbrainInputError(f"{self.path}: short read at row {rows[i]}")
            i = j

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[i]`` (a C-contiguous (len(rows), V) array) with full row ``rows[i]``, in
        any order; runs of consecutive rows are read with one call."""
        item, n_vox = self.dtype.itemsize, self.shape[1]
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            view = memoryview(out[i:j]).cast("B")
            got = os.preadv(self.fd(), [view], self.offset + int(rows[i]) * n_vox * item)
            if got != view.nbytes:
                raise GenbrainInputError(f"{self.path}: short read at row {rows[i]}")
            i = j

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # a worker process opens its own descriptor

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def write_shard(vectors: np.ndarray, path: str | os.PathLike, dtype: str = "float16") -> None:
    """Write an (n_images, V) array as one shard, atomically. float16 halves the disk and I/O
    (values are normalised, so float16's ~3 significant digits are ample)."""
    if dtype not in ("float16", "float32"):
        raise GenbrainInputError(f"store dtype must be float16 or float32, got '{dtype}'")
    save_npy(np.ascontiguousarray(vectors, dtype=dtype), path)


def merge_indices(index_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> pd.DataFrame:
    """Concatenate chunk indices into one store index whose ``shard`` paths are relative to
    ``out_path``'s folder; write it atomically and return it."""
    out_dir = Path(out_path).parent.resolve()
    frames = []
    for p in index_paths:
        df = read_tsv(p)
        base = Path(p).parent.resolve()
        df["shard"] = [os.path.relpath(base / s, out_dir) for s in df["shard"]]
        frames.append(df)
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INDEX_COLUMNS)
    save_tsv(merged, out_path)
    return merged


class ImageStore:
    """Random access to the images of one store, optionally restricted to some modalities
    and some participants.

    ``store[i]`` returns the (V,) float32 vector of index row ``i`` in O(1); ``store.table`` is
    the index (a DataFrame, one row per image, in item order).
    """

    def __init__(self, index_path: str | os.PathLike, modalities: Sequence[str] | None = None,
                 participants: Collection[str] | None = None):
        self.index_path = Path(index_path)
        table = read_tsv(self.index_path)
        missing = [c for c in INDEX_COLUMNS if c not in table.columns]
        if missing:
            raise GenbrainInputError(f"{self.index_path}: not an image-store index "
                                     f"(missing columns {missing})")
        if modalities is not None:
            table = table[table["modality"].isin(list(modalities))]
        if participants is not None:  # e.g. the training split of a cohort
            table = table[table["participant_id"].isin(set(participants))]
        self.table = table.reset_index(drop=True)
        root = self.index_path.parent
        self._shard_names = sorted(self.table["shard"].unique())
        code = {s: i for i, s in enumerate(self._shard_names)}
        self._shard_of = self.table["shard"].map(code).to_numpy(np.int64)
        self._row_of = self.table["row"].to_numpy(np.int64)
        self._arrays: list[np.ndarray | None] = [None] * len(self._shard_names)
        self._shards: list[NpyShard | None] = [None] * len(self._shard_names)
        self._root = root
        self.n_voxels = 0
        if self._shard_names:  # the first shard's header (checked whole) gives V
            self._shards[0] = NpyShard(root / self._shard_names[0], str(self.index_path))
            self.n_voxels = self._shards[0].shape[1]

    def _array(self, k: int) -> np.ndarray:
        arr = self._arrays[k]
        if arr is None:
            path = self._root / self._shard_names[k]
            if not path.exists():
                raise GenbrainInputError(f"{self.index_path}: shard '{self._shard_names[k]}' "
                                         "listed in the index is missing")
            arr = np.load(path, mmap_mode="r")
            self._arrays[k] = arr
        return arr

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._array(self._shard_of[i])[self._row_of[i]], dtype=np.float32)

    def row(self, i: int) -> np.ndarray:
        """(V,) copy of item ``i`` in the store's own dtype. For float16 stores this is ~10x
        faster than ``store[i]``: numpy's float16 -> float32 conversion costs ~450 us per image,
        so training loaders ship float16 and let torch convert whole batches (~50 us/image)."""
        return np.array(self._array(self._shard_of[i])[self._row_of[i]])

    def rows(self, items: Sequence[int]) -> np.ndarray:
        """(len(items), V) copies of ``items`` in the store's own dtype, in the order given.
        Each row is read from its shard with a positioned read straight into the output (one
        copy; consecutive rows in one call), not gathered from the memory map and scattered
        (two copies, a page fault per 4 KiB)."""
        items = np.asarray(items, dtype=np.int64)
        out = np.empty((len(items), self.n_voxels),
                       dtype=self._shard(0).dtype if self._shard_names else np.float32)
        shard_of, row_of = self._shard_of[items], self._row_of[items]
        if len(items) and (shard_of == shard_of[0]).all():
            self._shard(int(shard_of[0])).read_rows(row_of, out)  # one shard: no gather
            return out
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            block = np.empty((len(sel), self.n_voxels), dtype=out.dtype)
            self._shard(int(k)).read_rows(row_of[sel], block)
            out[sel] = block
        return out

    def _shard(self, k: int) -> NpyShard:
        shard = self._shards[k]
        if shard is None:
            shard = NpyShard(self._root / self._shard_names[k], str(self.index_path))
            if shard.shape[1] != self.n_voxels:
                raise GenbrainInputError(f"{shard.path}: {shard.shape[1]} voxels per image, the "
                                         f"store's first shard has {self.n_voxels}")
            self._shards[k] = shard
        return shard

    def sha256(self, chunk: int = 64) -> str:
        """Hex sha256 of what this (restricted) store holds: every index column but the
        storage location (``shard``, ``row``), then every image's bytes, in item order. Two
        stores with the same participants but re-preprocessed images differ (a fine-tune's
        work folder records it, :func:`genbrain.finetune.run_finetune`). ~0.1 s for 120
        float16 images at 2 mm (measured on the demo's scz/siteA)."""
        digest = hashlib.sha256()
        content = self.table.drop(columns=["shard", "row"])
        digest.update(content.to_csv(sep="\t", index=False).encode())
        for start in range(0, len(self), chunk):
            digest.update(self.rows(np.arange(start, min(start + chunk, len(self)))).tobytes())
        return digest.hexdigest()

    def batch(self, items: Sequence[int]) -> np.ndarray:
        """(len(items), V) float32 array of the given items."""
        return self.rows(items).astype(np.float32, copy=False)
