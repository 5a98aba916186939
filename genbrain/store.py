"""Image stores: many standard-space images as memory-mapped voxel-vector arrays.

Layout of a cohort store (``results/stores/<cohort>/``)::

    index.tsv                          one row per image: participant_id, site, age, sex, ...,
                                       modality, modality_index, shard, row, qc columns
    site-<site>/chunk-<k>/<modality>.npy   (n_images, V) float16/float32, rows in index order

``shard`` paths in the index are relative to the index file, so a store can be moved.
Loading an item is O(1): the index is read once into arrays; each item is one memmap row.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv, save_npy, save_tsv

INDEX_COLUMNS = ("participant_id", "site", "age", "sex", "modality", "modality_index", "shard",
                 "row")


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
        self._root = root
        self.n_voxels = self._array(0).shape[1] if len(self._shard_names) else 0

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
        """(len(items), V) copies of ``items`` in the store's own dtype, read with one sorted
        fancy-index per shard (a batch costs a few large reads, not one per item)."""
        items = np.asarray(items, dtype=np.int64)
        out = None
        shard_of, row_of = self._shard_of[items], self._row_of[items]
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            order = np.argsort(row_of[sel], kind="stable")
            block = self._array(int(k))[row_of[sel][order]]  # sorted rows: sequential reads
            if out is None:
                out = np.empty((len(items), block.shape[1]), dtype=block.dtype)
            out[sel[order]] = block
        if out is None:
            return np.zeros((0, self.n_voxels), np.float32)
        return out

    def batch(self, items: Sequence[int]) -> np.ndarray:
        """(len(items), V) float32 array of the given items."""
        return self.rows(items).astype(np.float32, copy=False)
