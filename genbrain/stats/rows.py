"""Blocks of images for the statistics: rows x voxel ranges of an array or an image store.

The statistics never hold a cohort in memory: they read (rows, voxel range) blocks through
:class:`ImageRows`. Store shards are read with positioned reads (``os.preadv``) straight into
the output buffer rather than through a memory map: pages touched through a mapping stay in the
process's resident set until the kernel reclaims them, so a pass over a 20 GB store would
report (and, under a cgroup, be charged for) ~20 GB of RSS although the working set is one
block. Positioned reads leave those pages in the shared page cache only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genbrain.errors import GenbrainInputError
from genbrain.store import ImageStore, NpyShard


class ImageRows:
    """n images of V voxels, read in (members, voxel range) blocks.

    ``images`` is an (N, V) array (a memmap is fine) or an :class:`ImageStore`; ``items``
    selects positions in it: None = all N, an (n,) integer array = those items, an (n, k)
    array = member i is the voxelwise mean of the k items in row i (k-sample averaging).
    """

    def __init__(self, images: np.ndarray | ImageStore, items: np.ndarray | Sequence | None = None):
        self.images = images
        if isinstance(images, ImageStore):
            n_all, self.n_voxels = len(images), images.n_voxels
            self._source = str(images.index_path)
            root = images.index_path.parent
            names = sorted(images.table["shard"].unique())
            self._files = [NpyShard(root / s, self._source) for s in names]
            code = {s: i for i, s in enumerate(names)}
            self._shard_of = images.table["shard"].map(code).to_numpy(np.int64)
            self._row_of = images.table["row"].to_numpy(np.int64)
            for f in self._files:
                if f.shape[1] != self.n_voxels:
                    raise GenbrainInputError(f"{f.path}: {f.shape[1]} voxels per image, the "
                                             f"store's first shard has {self.n_voxels}")
            n_rows = np.array([f.shape[0] for f in self._files], dtype=np.int64)
            bad = self._row_of >= n_rows[self._shard_of] if len(n_rows) else self._row_of < 0
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise GenbrainInputError(f"{self._source}: index row {i + 1} points at row "
                                         f"{self._row_of[i]} beyond its shard")
            self.dtype = self._files[0].dtype if self._files else np.dtype(np.float32)
        else:
            if images.ndim != 2:
                raise GenbrainInputError(f"images must be an (n_images, n_voxels) array, got "
                                         f"shape {images.shape}")
            n_all, self.n_voxels = images.shape
            self.dtype = images.dtype
        if items is None:
            items = np.arange(n_all, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if items.ndim == 1:
            items = items[:, None]
        if items.ndim != 2 or (items.size and (items.min() < 0 or items.max() >= n_all)):
            raise GenbrainInputError(f"image items must be (n,) or (n, k) positions in "
                                     f"0..{n_all - 1}, got shape {items.shape}")
        self.items = items  # (n, k)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def k(self) -> int:
        """Items averaged into each member."""
        return self.items.shape[1]

    def subset(self, members: np.ndarray | Sequence[int]) -> ImageRows:
        """The same images restricted to some members (positions 0..n-1)."""
        out = ImageRows.__new__(ImageRows)
        out.__dict__.update(self.__dict__)
        out.items = self.items[np.asarray(members, dtype=np.int64)]
        return out

    def _read_items(self, flat: np.ndarray, start: int, stop: int) -> np.ndarray:
        """(len(flat), stop - start) in the images' own dtype, in the order of ``flat``."""
        if not isinstance(self.images, ImageStore):
            x = self.images
            if len(flat) and np.all(np.diff(flat) == 1):  # a contiguous run: a view, no gather
                return np.asarray(x[flat[0]: flat[-1] + 1, start:stop])
            return np.asarray(x[flat, start:stop])
        out = np.empty((len(flat), stop - start), dtype=self.dtype)
        shard_of, row_of = self._shard_of[flat], self._row_of[flat]
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            order = sel[np.argsort(row_of[sel], kind="stable")]  # ascending rows: sequential reads
            if len(order) == len(flat) and np.array_equal(order, np.arange(len(flat))):
                self._files[s].read(row_of[order], start, stop, out)
            else:
                buf = np.empty((len(order), stop - start), dtype=self.dtype)
                self._files[s].read(row_of[order], start, stop, buf)
                out[order] = buf
        return out

    def read(self, members: slice | np.ndarray | Sequence[int] = slice(None),
             voxels: slice = slice(None), dtype: np.dtype | type = np.float64) -> np.ndarray:
        """(m, c) block of ``members`` x ``voxels`` cast to ``dtype`` (averaged members are
        averaged in float64 before the cast)."""
        start, stop, step = voxels.indices(self.n_voxels)
        if step != 1:
            raise ValueError("voxel ranges must be contiguous")
        items = self.items[members]
        m, k = items.shape
        block = self._read_items(items.ravel(), start, stop)
        if k == 1:
            out = block.astype(dtype, copy=False)
            if not isinstance(self.images, ImageStore) and np.may_share_memory(out, self.images):
                out = out.copy()  # callers may work in place; never hand out the user's array
            return out
        return block.reshape(m, k, stop - start).mean(axis=1, dtype=np.float64).astype(
            dtype, copy=False)
