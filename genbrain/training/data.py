"""Training items and the order they are seen in.

:class:`VoxelDataset` turns the rows of one or more image stores into items (the target image,
its labels from :mod:`genbrain.conditions`, and for image-conditioned tasks the same
participant's source images); :class:`ItemOrder` and :class:`MicroBatchSampler` make the
seeded, resumable stream of batches described in :mod:`genbrain.training.loop`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from genbrain.conditions import Conditions, encode_labels, fit_norms, fit_ranges
from genbrain.errors import GenbrainInputError
from genbrain.layout import Converter, store_converter
from genbrain.model.dit import DiT
from genbrain.seeds import seed_of
from genbrain.store import ImageStore
from genbrain.training.config import STREAM_ORDER


class VoxelDataset(Dataset):
    """The images of one or more stores as training items; labels are read once into arrays.

    Item i -> dict of tensors: ``x`` (1, V) in the store's dtype (float16 stores stay float16
    until the training loop casts the whole batch, ~10x cheaper than numpy per item), the DiT
    labels of :func:`genbrain.conditions.encode_labels` (``age`` () float32 z-scored, ``sex``
    () int64, ``modality`` () int64, ``disease``, ``score`` with those conditions), and with
    ``sources`` ``x_cond`` (K, V): the same participant's images of the K source modalities
    (same site and participant_id, same store), which the loop appends to the noisy input.

    ``modalities`` keeps only these target modalities (None = all but the sources).
    ``norms`` ({"age": {"mean", "std"}, "score": ...}) gives scalings to reuse; missing ones are
    fitted here over one value per (site, participant_id) and exposed as ``self.norms``.
    ``self.ranges`` ({"age": {"min", "max"}, "score": ...}): the values of those participants,
    widened to span ``ranges`` (a fine-tune's init model's age range, a resumed run's own).

    Vectors are in the stores' layout until :meth:`to_model` names the model they feed: then
    ``x``, ``x_cond`` and :attr:`n_voxels` are in the model's layout (converted per batch,
    :func:`genbrain.layout.store_converter`), which templates and training see alike.
    """

    def __init__(self, stores: Sequence[ImageStore], *, modalities: Sequence[str] | None = None,
                 norms: Mapping[str, Mapping[str, float]] | None = None,
                 diagnosis_levels: Sequence[str] | None = None, score_column: str | None = None,
                 sources: Sequence[str] | None = None, demographics: bool = True,
                 ranges: Mapping[str, Mapping[str, float]] | None = None):
        self.stores = list(stores)
        self.diagnosis_levels, self.score_column = diagnosis_levels, score_column
        self.sources = list(sources or [])
        self._convert: list[Converter | None] = [None] * len(self.stores)  # store -> model
        wanted = ["participant_id", "site", "modality", "modality_index"]
        wanted += ["age", "sex"] * demographics + ["diagnosis"] * bool(diagnosis_levels)
        wanted += [score_column] * bool(score_column)
        frames, lookups = [], []
        for s, store in enumerate(self.stores):
            t = store.table
            for col in wanted:
                if col not in t.columns:
                    raise GenbrainInputError(f"{store.index_path}: missing column '{col}'")
            if modalities is not None:
                keep = t["modality"].isin(list(modalities)).to_numpy()
            else:
                keep = ~t["modality"].isin(self.sources).to_numpy()
            f = t.loc[keep, wanted].copy()
            f["_store"], f["_row"] = s, np.flatnonzero(keep)
            frames.append(f)
            lookups.append({(str(a), str(b), str(m)): i for i, (a, b, m) in enumerate(
                zip(t["site"], t["participant_id"], t["modality"]))} if self.sources else {})
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if len(table) == 0:
            raise GenbrainInputError(
                f"no images to train on in {', '.join(str(s.index_path) for s in self.stores)}"
                + (f" with modalities {list(modalities)}" if modalities is not None else ""))
        self.table = table  # one row per item; kept for error messages only
        people = table.drop_duplicates(["site", "participant_id"])
        numeric = [("age", "age" if demographics else None), ("score", score_column)]
        self.norms = fit_norms(people, numeric, norms)
        self.ranges = fit_ranges(people, numeric, ranges)
        if not demographics and "age" not in self.norms:  # kept for the checkpoint's sake
            self.norms["age"] = {"mean": 0.0, "std": 1.0}
        self.conditions = Conditions(norms=self.norms, demographics=demographics,
                                     diagnosis_levels=tuple(diagnosis_levels)
                                     if diagnosis_levels else None,
                                     score_column=score_column, sources=tuple(self.sources),
                                     ranges=self.ranges)
        self._store = table["_store"].to_numpy(np.int64)
        self._row = table["_row"].to_numpy(np.int64)
        for s, store in enumerate(self.stores):  # one-line errors naming the participant
            sel = np.flatnonzero(self._store == s)
            if len(sel):
                rows = table.iloc[sel]
                encode_labels(rows.reset_index(drop=True), self.conditions,
                              rows["modality_index"].to_numpy(), str(store.index_path),
                              lambda i, r=rows: f"{r['participant_id'].iloc[i]} "
                                                f"({r['modality'].iloc[i]})")
        self._labels = {k: np.array(v) for k, v in encode_labels(  # writable copies
            table, self.conditions, table["modality_index"].to_numpy(), "training items").items()}
        self._src_row = np.zeros((len(table), len(self.sources)), np.int64)  # (n, K)
        for j, src in enumerate(self.sources):
            for i, (s, site, pid, mod) in enumerate(zip(self._store, table["site"],
                                                        table["participant_id"],
                                                        table["modality"])):
                row = lookups[s].get((str(site), str(pid), src))
                if row is None:
                    raise GenbrainInputError(
                        f"{self.stores[s].index_path}: {pid} (site {site}) has a {mod} image "
                        f"but no {src} image, which the task uses as its source; give every "
                        "participant the source modalities or drop the participant")
                self._src_row[i, j] = row

    def __len__(self) -> int:
        return len(self._store)

    def _read(self, idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(n, V) rows ``rows`` of the stores of items ``idx``, in the stores' dtype."""
        stores = np.unique(self._store[idx])
        if len(stores) == 1:  # the usual case: the store's rows are the batch, no second copy
            return self._as_model(int(stores[0]), self.stores[int(stores[0])].rows(rows))
        x = None
        for s in stores:
            sel = np.flatnonzero(self._store[idx] == s)
            block = self._as_model(int(s), self.stores[int(s)].rows(rows[sel]))  # (m, V)
            if x is None:
                x = np.empty((len(idx), block.shape[1]), dtype=block.dtype)
            x[sel] = block
        return x

    def _as_model(self, s: int, block: np.ndarray) -> np.ndarray:
        """(m, V_store) rows of store ``s`` -> (m, V) in the model's layout."""
        conv = self._convert[s]
        return block if conv is None else conv(block)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """A whole micro-batch, already collated: ``x`` (n, 1, V) in the store's dtype, labels
        (n,), ``x_cond`` (n, K, V) with sources. DataLoader calls this instead of n
        ``__getitem__`` calls; rows of each store are read together (:meth:`ImageStore.rows`)."""
        idx = np.asarray(indices, dtype=np.int64)
        batch = {"x": torch.from_numpy(self._read(idx, self._row[idx])).unsqueeze(1)}
        if self.sources:
            batch["x_cond"] = torch.from_numpy(np.stack(
                [self._read(idx, self._src_row[idx, j]) for j in range(len(self.sources))],
                axis=1))  # (n, K, V)
        batch.update({k: torch.from_numpy(v[idx]) for k, v in self._labels.items()})
        return batch

    @property
    def n_voxels(self) -> int:
        """V of the items: the model's after :meth:`to_model`, else the first store's."""
        conv = self._convert[self._store[0]]
        return self.stores[self._store[0]].n_voxels if conv is None else conv.dst.n_voxels

    def to_model(self, config: Mapping, source: str) -> None:
        """Serve items in the layout of the model of checkpoint ``config`` (named ``source``):
        its ``layout`` record and ``model.n_voxels``. Every store with items must hold the
        standard layout or the model's length (one-line error otherwise)."""
        for s, store in enumerate(self.stores):
            if (self._store == s).any():
                self._convert[s] = store_converter(config.get("layout"),
                                                   config["model"]["n_voxels"],
                                                   store.n_voxels, source,
                                                   str(store.index_path))

    def check_voxels(self, n_voxels: int, source: str) -> None:
        """Every store with items must have ``n_voxels`` voxels (those of ``source``)."""
        for s, store in enumerate(self.stores):
            if (self._store == s).any() and store.n_voxels != n_voxels:
                raise GenbrainInputError(f"{store.index_path}: images have {store.n_voxels} "
                                         f"voxels but {source} expects {n_voxels}")

    def check_model(self, model: DiT) -> None:
        """The model has a row for every modality index, a head for every label given and an
        input channel for every source modality."""
        n_mod = model.modality_embedder.num_embeddings - 1
        bad = (self._labels["modality"] < 0) | (self._labels["modality"] >= n_mod)
        if bad.any():
            row = self.table.iloc[int(np.flatnonzero(bad)[0])]
            raise GenbrainInputError(
                f"{self.stores[row['_store']].index_path}: modality '{row['modality']}' has "
                f"index {row['modality_index']} but the model's modality table holds {n_mod} "
                f"(indices 0..{n_mod - 1}); add it with the extend_modalities surgery")
        table = model.disease_embedder
        n_dis = None if table is None else table.num_embeddings - 1
        if self.diagnosis_levels and n_dis != len(self.diagnosis_levels):
            raise GenbrainInputError(
                f"diagnosis_levels has {len(self.diagnosis_levels)} levels but the model's "
                f"disease head has {n_dis or 'no'} classes; use add_disease_head"
                f"({len(self.diagnosis_levels)})")
        if self.score_column and model.score_embedder is None:
            raise GenbrainInputError(f"score_column '{self.score_column}' is set but the model "
                                     "has no score head; use add_score_head")
        extra = model.in_channels - model.out_channels
        if extra != len(self.sources):
            raise GenbrainInputError(
                f"the model takes {extra} image-conditioning channels but the task gives "
                f"{len(self.sources)} source modalities ({', '.join(self.sources) or 'none'}); "
                "the widen_input surgery adds input channels")


class ItemOrder:
    """The order items are seen in: an endless stream of per-epoch permutations, epoch e drawn
    from a ``torch.Generator`` seeded with (seed, e). A position is (epoch, offset)."""

    def __init__(self, n_items: int, seed: int):
        self.n_items, self.seed = n_items, seed
        self._cache: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        """(n_items,) item indices of one epoch."""
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(seed_of(self.seed, STREAM_ORDER, epoch))
            self._cache = {epoch: torch.randperm(self.n_items, generator=g)}  # one epoch kept
        return self._cache[epoch]

    def advance(self, position: tuple[int, int], n: int) -> tuple[int, int]:
        """The position n items after ``position``."""
        total = position[1] + n
        return position[0] + total // self.n_items, total % self.n_items

    def take(self, position: tuple[int, int], n: int) -> Tensor:
        """(n,) the next n item indices from ``position`` (a batch may straddle epochs)."""
        parts = []
        while n > 0:
            part = self.permutation(position[0])[position[1]: position[1] + n]
            parts.append(part)
            n -= len(part)
            position = self.advance(position, len(part))
        return torch.cat(parts)


class MicroBatchSampler(Sampler[list[int]]):
    """Endless micro-batches of one rank: each global batch of the stream is cut into ``world``
    equal shares (rank r gets slots r*share..(r+1)*share-1) and the share into micro-batches."""

    def __init__(self, order: ItemOrder, position: tuple[int, int], global_batch: int,
                 micro_batch: int, rank: int, world: int):
        self.order, self.position = order, position
        self.global_batch, self.micro_batch, self.rank, self.world = (
            global_batch, micro_batch, rank, world)

    def __iter__(self) -> Iterator[list[int]]:
        position, share = self.position, self.global_batch // self.world
        while True:
            mine = self.order.take(position, self.global_batch)[self.rank * share:][:share]
            position = self.order.advance(position, self.global_batch)
            for k in range(0, share, self.micro_batch):
                yield mine[k: k + self.micro_batch].tolist()


def collated(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """DataLoader collate for :meth:`VoxelDataset.__getitems__`, which returns a ready batch."""
    return batch
