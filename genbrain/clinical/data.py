"""The regressor's inputs: images with a score, and the volumes the network sees.

Input (:class:`CropVolumes`): voxel vectors scattered into the crop ``[9:81, 10:100, 1:77]`` of
the 2 mm grid (72 x 90 x 76, the GenBrain code's crop; 0 outside the brain mask), optionally
average-pooled by ``pool`` (1 = the paper; 2 = 4 mm, ~8x less compute, for CPU demos).

Images (:class:`ScoreImages`): rows of one or more image stores with their checked scores.

Split. :func:`genbrain.splits.score_split`: 3:1:1 train/val/test over participants, seeded and
stratified by score (see there). It is drawn once and shared by every (ratio, seed) job, as in
the paper (the generator was fine-tuned on the training split only); :func:`split_images`
takes each part's images from the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from genbrain.clinical.config import PAPER_CROP, RegressConfig
from genbrain.errors import GenbrainInputError
from genbrain.space import StandardSpace, standard_space
from genbrain.splits import SCORE_SPLITS
from genbrain.store import ImageStore
from genbrain.tables import check_scores, row_name


class CropVolumes:
    """Voxel vectors -> cropped (and pooled) volumes for the network.

    ``crop``: (start, stop) per axis of ``space``'s grid; ``pool``: average-pooling factor.
    ``__call__``: (n, V) array -> (n, 1, *shape) float32 tensor, 0 outside the brain mask.
    The vector entries inside the crop are scattered straight into the crop box, so the whole
    91x109x91 volume is never built.
    """

    def __init__(self, crop: Sequence[Sequence[int]] = PAPER_CROP, pool: int = 1,
                 space: StandardSpace | None = None):
        self.space = space or standard_space()
        self.crop = tuple((int(a), int(b)) for a, b in crop)
        for axis, ((a, b), size) in enumerate(zip(self.crop, self.space.shape)):
            if not 0 <= a < b <= size or (b - a) < pool:
                grid = "x".join(map(str, self.space.shape))
                raise GenbrainInputError(
                    f"regression config: 'crop' {[list(c) for c in self.crop]} lies outside the "
                    f"{grid} grid on axis {'xyz'[axis]} ({a}:{b}; expected 0 <= start < stop <= "
                    f"{size}, at least 'pool' = {pool} voxels)")
        self.pool = pool
        self.box = tuple(b - a for a, b in self.crop)  # crop shape before pooling
        ijk = self.space.voxel_indices  # (3, V)
        inside = np.all([(ijk[d] >= a) & (ijk[d] < b) for d, (a, b) in enumerate(self.crop)], 0)
        self._sel = np.flatnonzero(inside)  # vector entries that land in the box
        local = ijk[:, inside] - np.array([a for a, _ in self.crop])[:, None]
        self._flat = np.ravel_multi_index(tuple(local), self.box)  # their flat box positions

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape of the network input (after pooling)."""
        return tuple(s // self.pool for s in self.box)

    def __call__(self, vectors: np.ndarray) -> Tensor:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.space.n_voxels:
            raise ValueError(f"expected (n, {self.space.n_voxels}) vectors, got {vectors.shape}")
        out = np.zeros((len(vectors), int(np.prod(self.box))), np.float32)
        out[:, self._flat] = vectors[:, self._sel]
        x = torch.from_numpy(out).view(len(vectors), 1, *self.box)  # (n, 1, X, Y, Z)
        if self.pool > 1:
            x = nn.functional.avg_pool3d(x, self.pool)  # (n, 1, X/p, Y/p, Z/p)
        return x


@dataclass
class ScoreImages:
    """Images with a score: rows of one or more image stores.

    ``stores``; ``store`` (n,) index into ``stores``; ``row`` (n,) row of that store's table;
    ``y`` (n,) float32 scores; ``source`` names the images in messages.
    """

    stores: list[ImageStore]
    store: np.ndarray
    row: np.ndarray
    y: np.ndarray
    source: str = "images"

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def from_store(cls, store: ImageStore, column: str, score_max: float,
                   rows: Sequence[int] | None = None) -> ScoreImages:
        """The images of ``store`` (or its ``rows``) with their checked scores."""
        rows = np.arange(len(store)) if rows is None else np.asarray(rows, np.int64)
        y = check_scores(store.table.iloc[rows], column, score_max, str(store.index_path))
        return cls([store], np.zeros(len(rows), np.int64), rows, y.astype(np.float32),
                   str(store.index_path))

    def subset(self, items: Sequence[int]) -> ScoreImages:
        """The images ``items`` (positions in this set), in that order."""
        items = np.asarray(items, np.int64)
        return ScoreImages(self.stores, self.store[items], self.row[items], self.y[items],
                           self.source)

    def __add__(self, other: ScoreImages) -> ScoreImages:
        offset = len(self.stores)
        return ScoreImages(self.stores + other.stores,
                           np.concatenate([self.store, other.store + offset]),
                           np.concatenate([self.row, other.row]),
                           np.concatenate([self.y, other.y]),
                           f"{self.source} + {other.source}")

    def vectors(self, items: Sequence[int]) -> np.ndarray:
        """(len(items), V) float32 voxel vectors of ``items`` (positions in this set)."""
        items = np.asarray(items, np.int64)
        out: np.ndarray | None = None
        for s in np.unique(self.store[items]):
            sel = np.flatnonzero(self.store[items] == s)
            block = self.stores[int(s)].batch(self.row[items[sel]])  # (m, V)
            if out is None:
                out = np.empty((len(items), block.shape[1]), np.float32)
            out[sel] = block
        assert out is not None, "vectors() of no items"
        return out

    def fingerprint(self) -> str:
        """Hash of the scores and the store rows: a resumed fit must see the same images."""
        h = hashlib.sha256()
        for s, r in zip(self.store, self.row):
            path = self.stores[s].index_path  # folder/name: the pool and the cohort differ
            h.update(f"{path.parent.name}/{path.name}:{r};".encode())
        h.update(self.y.astype(np.float32).tobytes())
        return h.hexdigest()[:16]


def split_images(store: ImageStore, split: pd.DataFrame, config: RegressConfig
                 ) -> dict[str, ScoreImages]:
    """The images of ``store`` per split ("train", "val", "test"), by participant_id."""
    which = dict(zip(split["participant_id"].astype(str), split["split"]))
    part = store.table["participant_id"].astype(str).map(which)
    if part.isna().any():
        i = int(np.flatnonzero(part.isna().to_numpy())[0])
        raise GenbrainInputError(f"{store.index_path}: {row_name(store.table, i)} is in no "
                                 "split of the split table")
    return {s: ScoreImages.from_store(store, config.score_column, config.score_max,
                                      np.flatnonzero((part == s).to_numpy()))
            for s in SCORE_SPLITS}
