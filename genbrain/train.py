"""One training loop for pretraining and every fine-tuning head.

The loop. :func:`train` fits a :class:`~genbrain.model.dit.DiT` to the images of one or more
image stores with the IDDPM hybrid loss of :class:`~genbrain.model.diffusion.GaussianDiffusion`.
Each optimizer step consumes one global batch of ``global_batch`` images: under torchrun
(DistributedDataParallel; nccl on CUDA, gloo on CPU) every rank takes a disjoint equal share,
and each rank cuts its share into micro-batches whose gradients accumulate, so the step is the
same whatever the world size. Then AdamW steps and the EMA copy follows (buffers, i.e. the
positional embedding, copied). bf16 autocast and TF32 matmuls on CUDA, fp32 on CPU (``precision``
chooses otherwise: bf16 autocast also pays on CPUs with AVX512-BF16 or AMX). Rank 0 logs
(step, loss, steps/s, ETA) every ``log_every`` steps and writes the checkpoints.

Fine-tuning is the same loop: ``init_checkpoint`` supplies pretrained weights (those that
:func:`load_for_sampling` would give), ``surgeries`` such as ``[("add_disease_head", 2)]`` add
zero-initialised heads, and ``config.finetune`` chooses what trains: ``full`` (everything),
``new-modules-only`` (only what surgery created: new heads, new modality rows, new input
channels) or ``last-k-blocks`` (that, plus the last k DiT blocks and the final layer).

Labels. sex: M = 0, F = 1 (the DiT's row 2 is the null label). Age and score are z-scored with a
mean and std computed once over the training table (one value per participant), except that a
fine-tuning run inherits the age scaling of its init checkpoint so the pretrained age embedder
keeps its meaning. disease = position of ``diagnosis`` in ``config.diagnosis_levels``. The
scalings are saved in the checkpoint (``config.norms``) so that sampling applies the same ones.

A checkpoint (``out_dir/checkpoint.pt``; written atomically by rank 0 every ``checkpoint_every``
steps and at the end) holds ``model``, ``ema`` (state dicts), ``optimizer``, ``step``,
``data_position`` (epoch, offset, n_items), ``rng`` (the global torch and CUDA states),
``losses`` (float64 tensor: the mean loss of every step since step 1, for loss curves) and
``config`` = {train: TrainConfig as a dict, model: DiT.spec(), norms, surgeries,
init_checkpoint}.

Exact resume. Rerunning :func:`train` with the same ``out_dir`` loads the checkpoint and goes
on. Every random number of step s is a function of (seed, s), nothing else:
- data order: the items form an endless stream of per-epoch permutations, epoch e drawn from a
  ``torch.Generator`` seeded with (seed, e); step s takes the next ``global_batch`` items from
  the checkpointed position (epoch, offset);
- the timestep, noise and label-dropout draw of the item in slot j of step s's global batch come
  from a ``torch.Generator`` seeded with (seed, s, j).
So the generators' state is implied by the checkpointed step and the global RNG is never used by
the loop: a run killed after a checkpoint and rerun ends bitwise equal to an uninterrupted run
(on CPU; on CUDA, kernels with atomic adds make it equal to float rounding). As draws are keyed
by global slot, not by rank, neither the number of ranks nor the micro-batch size changes the
run beyond float summation order.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from genbrain.covariates import SEXES
from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_path
from genbrain.model.diffusion import PREDICTIONS, GaussianDiffusion
from genbrain.model.dit import N_MODALITIES, PRESETS, DiT, dit_from_spec
from genbrain.store import ImageStore

log = logging.getLogger(__name__)

FINETUNE_MODES = ("full", "new-modules-only", "last-k-blocks")
WEIGHTS = ("ema", "model")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
SURGERIES = ("add_disease_head", "add_score_head", "add_part_head", "extend_modalities",
             "widen_input")
CHECKPOINT = "checkpoint.pt"
#: TrainConfig keys a resumed run may change: they do not alter the trajectory.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "sampling_weights")
_ORDER, _ITEM, _INIT = 1, 2, 3  # independent random streams derived from the seed

StoreLike = ImageStore | str | os.PathLike
Surgery = str | Sequence[Any]  # "add_score_head" or ("add_disease_head", 2)


class TrainingDiverged(GenbrainInputError):
    """The loss became NaN/inf; the message names the step and the checkpoint kept."""


@dataclass
class TrainConfig:
    """Settings of one training run; saved in its checkpoint.

    Model (a fresh run; fine-tuning takes the architecture of ``init_checkpoint``): ``preset``
    from ``PRESETS``; ``patch_size`` overrides the preset's (small tests); ``pos_embed``;
    ``prediction``: what the network predicts, ``epsilon`` (the paper) or ``v`` (see
    :mod:`genbrain.model.diffusion`); ``modality_templates``: embed each modality's mean
    training image into the tokens (see :mod:`genbrain.model.dit`; the mean is taken over at
    most ``template_images`` images per modality, evenly spread over the training items);
    ``n_modalities`` rows of the modality table.
    Data: ``modalities`` keeps only these store modalities (None = all); ``diagnosis_levels``
    feeds ``diagnosis`` as the disease label (index = position); ``score_column`` feeds that
    column, z-scored, as the score label.
    Optimisation: ``steps`` optimizer steps of ``global_batch`` images (summed over ranks),
    ``micro_batch`` images per forward pass on a rank (None = the rank's whole share; smaller
    values accumulate gradients), AdamW (``lr``, ``weight_decay``, ``betas``), ``ema_decay``,
    ``label_dropout`` (CFG: all labels of an image dropped together), ``seed``.
    Bookkeeping: ``checkpoint_every``, ``log_every`` (steps). ``finetune``: one of
    ``FINETUNE_MODES``, with ``finetune_k`` blocks for ``last-k-blocks``. ``sampling_weights``:
    which weights (``ema`` or ``model``) sampling uses by default; short runs want ``model``
    (with decay 0.9999 the EMA is still ~90% initial weights after 1,000 steps).
    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16`` (autocast
    on any device; ~1.4x for the demo's train step on an AMD EPYC with AVX512-BF16).
    """

    preset: str = "L/256"
    patch_size: int | None = None
    pos_embed: str = "raster2d"
    prediction: str = "epsilon"
    modality_templates: bool = False
    template_images: int = 2000
    n_modalities: int = N_MODALITIES
    modalities: list[str] | None = None
    diagnosis_levels: list[str] | None = None
    score_column: str | None = None
    steps: int = 1000
    global_batch: int = 192
    micro_batch: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 100
    finetune: str = "full"
    finetune_k: int = 2
    sampling_weights: str = "ema"
    precision: str = "auto"

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> None:
            raise GenbrainInputError(
                f"training config: '{key}' is {getattr(self, key)!r}; expected {expected}")
        if self.preset not in PRESETS:
            bad("preset", f"one of {', '.join(PRESETS)}")
        if self.finetune not in FINETUNE_MODES:
            bad("finetune", f"one of {', '.join(FINETUNE_MODES)}")
        if self.prediction not in PREDICTIONS:
            bad("prediction", f"one of {', '.join(PREDICTIONS)}")
        if self.precision not in TRAIN_PRECISIONS:
            bad("precision", f"one of {', '.join(TRAIN_PRECISIONS)}")
        if self.sampling_weights not in WEIGHTS:
            bad("sampling_weights", f"one of {', '.join(WEIGHTS)}")
        for key in ("steps", "global_batch", "checkpoint_every", "log_every", "finetune_k",
                    "n_modalities", "template_images"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "an integer >= 1")
        for key in ("micro_batch", "patch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                bad(key, "an integer >= 1 or null")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "an integer >= 0")
        if not self.lr > 0 or self.weight_decay < 0:
            bad("lr" if not self.lr > 0 else "weight_decay", "lr > 0 and weight_decay >= 0")
        if not 0 <= self.ema_decay <= 1:
            bad("ema_decay", "a number in [0, 1]")
        if not 0 <= self.label_dropout < 1:
            bad("label_dropout", "a number in [0, 1)")
        self.betas = tuple(self.betas)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "training config") -> TrainConfig:
        """Build from a plain dict (a config section, a checkpoint); unknown keys are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise GenbrainInputError(f"{source}: unknown key '{unknown[0]}'; expected some of: "
                                     f"{', '.join(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-like dict (lists, not tuples), as stored in checkpoints."""
        return _plain(dataclasses.asdict(self))


@dataclass
class TrainResult:
    """What :func:`train` did: the checkpoint written, the step reached, and the mean loss of
    every step this call ran (empty when the checkpoint had already reached ``steps``)."""

    checkpoint: Path
    step: int
    losses: list[float]


# --------------------------------------------------------------------------------------------
# Data: items, and the order they are seen in
# --------------------------------------------------------------------------------------------


class VoxelDataset(Dataset):
    """The images of one or more stores as training items; labels are read once into arrays.

    Item i -> dict of tensors: ``x`` (1, V) in the store's dtype (float16 stores stay float16
    until the training loop casts the whole batch, ~10x cheaper than numpy per item); ``age`` () float32, z-scored; ``sex`` ()
    int64 (M = 0, F = 1); ``modality`` () int64; with ``diagnosis_levels``, ``disease`` () int64;
    with ``score_column``, ``score`` () float32, z-scored. Every key but ``x`` is a DiT label
    name; paired conditioning images will be ``x_cond`` (C_extra, V), which the loop already
    appends to the noisy input.

    ``norms`` ({"age": {"mean", "std"}, "score": ...}) gives scalings to reuse; missing ones are
    fitted here over one value per (site, participant_id) and exposed as ``self.norms``.
    """

    def __init__(self, stores: Sequence[ImageStore], *, modalities: Sequence[str] | None = None,
                 norms: Mapping[str, Mapping[str, float]] | None = None,
                 diagnosis_levels: Sequence[str] | None = None, score_column: str | None = None):
        self.stores = list(stores)
        self.diagnosis_levels, self.score_column = diagnosis_levels, score_column
        wanted = ["participant_id", "site", "age", "sex", "modality", "modality_index"]
        wanted += ["diagnosis"] * bool(diagnosis_levels) + [score_column] * bool(score_column)
        frames = []
        for s, store in enumerate(self.stores):
            t = store.table
            for col in wanted:
                if col not in t.columns:
                    raise GenbrainInputError(f"{store.index_path}: missing column '{col}'")
            keep = np.ones(len(t), bool) if modalities is None else \
                t["modality"].isin(list(modalities)).to_numpy()
            f = t.loc[keep, wanted].copy()
            f["_store"], f["_row"] = s, np.flatnonzero(keep)
            self._validate(store, f)
            frames.append(f)
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if len(table) == 0:
            raise GenbrainInputError(
                f"no images to train on in {', '.join(str(s.index_path) for s in self.stores)}"
                + (f" with modalities {list(modalities)}" if modalities is not None else ""))
        self.table = table  # one row per item; kept for error messages only
        self.norms = {k: dict(v) for k, v in (norms or {}).items()}
        people = table.drop_duplicates(["site", "participant_id"])
        for key, col in (("age", "age"), ("score", score_column)):
            if col and key not in self.norms:
                self.norms[key] = _fit_norm(people[col].to_numpy(np.float64))
        self._store = table["_store"].to_numpy(np.int64)
        self._row = table["_row"].to_numpy(np.int64)
        self._labels: dict[str, np.ndarray] = {
            "age": _zscore(table["age"], self.norms["age"]),
            "sex": table["sex"].map({s: i for i, s in enumerate(SEXES)}).to_numpy(np.int64),
            "modality": table["modality_index"].to_numpy(np.int64),
        }
        if diagnosis_levels:
            self._labels["disease"] = table["diagnosis"].map(
                {d: i for i, d in enumerate(diagnosis_levels)}).to_numpy(np.int64)
        if score_column:
            self._labels["score"] = _zscore(table[score_column], self.norms["score"])

    def _validate(self, store: ImageStore, f: pd.DataFrame) -> None:
        """One-line error naming the store, participant and modality of the first bad row."""
        def first(bad: np.ndarray, col: str, expected: str) -> None:
            if bad.any():
                row = f.iloc[int(np.flatnonzero(bad)[0])]
                raise GenbrainInputError(f"{store.index_path}: {row['participant_id']} "
                                         f"({row['modality']}): {col} '{row[col]}' {expected}")
        def not_number(col: str) -> np.ndarray:
            return ~np.isfinite(pd.to_numeric(f[col], errors="coerce").to_numpy(np.float64))
        first(not_number("age"), "age", "is not a number")
        first(~f["sex"].isin(SEXES).to_numpy(), "sex", f"is not one of {', '.join(SEXES)}")
        if self.diagnosis_levels:
            first(~f["diagnosis"].isin(list(self.diagnosis_levels)).to_numpy(), "diagnosis",
                  f"is not one of {', '.join(self.diagnosis_levels)}")
        if self.score_column:
            first(not_number(self.score_column), self.score_column, "is not a number")

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        x = self.stores[self._store[i]].row(self._row[i])  # (V,) store dtype, one memmap row
        item = {"x": torch.from_numpy(x).unsqueeze(0)}  # (1, V); the loop casts to float32
        item.update({k: torch.tensor(v[i]) for k, v in self._labels.items()})
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """A whole micro-batch, already collated: ``x`` (n, 1, V) in the store's dtype, labels
        (n,). DataLoader calls this instead of n ``__getitem__`` calls; rows of each store are
        read together (:meth:`ImageStore.rows`)."""
        idx = np.asarray(indices, dtype=np.int64)
        stores = np.unique(self._store[idx])
        if len(stores) == 1:  # the usual case: the store's rows are the batch, no second copy
            x = self.stores[int(stores[0])].rows(self._row[idx])
        else:
            x = None
            for s in stores:
                sel = np.flatnonzero(self._store[idx] == s)
                block = self.stores[int(s)].rows(self._row[idx[sel]])  # (m, V)
                if x is None:
                    x = np.empty((len(idx), block.shape[1]), dtype=block.dtype)
                x[sel] = block
        batch = {"x": torch.from_numpy(x).unsqueeze(1)}  # (n, 1, V)
        batch.update({k: torch.from_numpy(v[idx]) for k, v in self._labels.items()})
        return batch

    @property
    def n_voxels(self) -> int:
        """V of the first store that has items."""
        return self.stores[self._store[0]].n_voxels

    def check_voxels(self, n_voxels: int, source: str) -> None:
        """Every store with items must have ``n_voxels`` voxels (those of ``source``)."""
        for s, store in enumerate(self.stores):
            if (self._store == s).any() and store.n_voxels != n_voxels:
                raise GenbrainInputError(f"{store.index_path}: images have {store.n_voxels} "
                                         f"voxels but {source} expects {n_voxels}")

    def check_model(self, model: DiT) -> None:
        """The model has a row for every modality index and a head for every label given."""
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
        if model.in_channels > model.out_channels:
            raise GenbrainInputError(
                f"the model takes {model.in_channels - model.out_channels} image-conditioning "
                "channels (widen_input) but paired conditioning images are not loaded yet")


def _fit_norm(values: np.ndarray) -> dict[str, float]:
    std = float(values.std())
    return {"mean": float(values.mean()), "std": std if std > 0 else 1.0}  # one value: keep scale


def _zscore(column: pd.Series, norm: Mapping[str, float]) -> np.ndarray:
    return ((pd.to_numeric(column).to_numpy(np.float64) - norm["mean"]) / norm["std"]).astype(
        np.float32)


class ItemOrder:
    """The order items are seen in: an endless stream of per-epoch permutations, epoch e drawn
    from a ``torch.Generator`` seeded with (seed, e). A position is (epoch, offset)."""

    def __init__(self, n_items: int, seed: int):
        self.n_items, self.seed = n_items, seed
        self._cache: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        """(n_items,) item indices of one epoch."""
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(_seed(self.seed, _ORDER, epoch))
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


def _collated(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """DataLoader collate for :meth:`VoxelDataset.__getitems__`, which returns a ready batch."""
    return batch


def _seed(*keys: int) -> int:
    """A 63-bit seed hashed from non-negative integer keys (independent streams per key)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------------------------
# Model, trainability, checkpoints
# --------------------------------------------------------------------------------------------


def _parse_surgeries(surgeries: Sequence[Surgery]) -> list[list[Any]]:
    out = []
    for s in surgeries:
        s = [s] if isinstance(s, str) else list(s)
        if not s or s[0] not in SURGERIES:
            raise GenbrainInputError(f"unknown surgery {s!r}; expected one of "
                                     f"{', '.join(SURGERIES)}")
        out.append(s)
    return out


def _operate(model: DiT, surgeries: Sequence[Sequence[Any]], seed: int) -> None:
    """Apply surgeries in order; their random draws (add_score_head) are seeded too."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(seed, _INIT, 1))
        for name, *args in surgeries:
            try:
                getattr(model, name)(*args)
            except TypeError as err:  # wrong number or type of arguments
                raise GenbrainInputError(f"surgery {[name, *args]!r}: {err}") from err


def _build_model(config: TrainConfig, n_voxels: int, init: Mapping | None,
                 init_path: Path | None, token_centroids: Any) -> DiT:
    """A fresh model seeded from config.seed, or the weights of an init checkpoint."""
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(_seed(config.seed, _INIT))
        if init is None:
            arch = dict(PRESETS[config.preset])
            arch["patch_size"] = config.patch_size or arch["patch_size"]
            return DiT(n_voxels, **arch, n_modalities=config.n_modalities,
                       pos_embed=config.pos_embed, token_centroids=token_centroids,
                       label_dropout=config.label_dropout,
                       modality_templates=config.modality_templates)
        pre = init["config"]["train"]
        older = {"modality_templates": False}  # what checkpoints without the key had
        for key in ("preset", "patch_size", "pos_embed", "modality_templates"):
            if pre.get(key, older.get(key)) != getattr(config, key):
                raise GenbrainInputError(
                    f"{init_path}: the init checkpoint has {key} {pre.get(key)!r} but the "
                    f"training config asks for {getattr(config, key)!r}")
        model = dit_from_spec(init["config"]["model"])
    model.load_state_dict(init[pre["sampling_weights"]])  # the weights its sampler would use
    model.label_dropout = config.label_dropout
    return model


def _set_templates(model: DiT, data: VoxelDataset, max_images: int) -> list[int]:
    """Set the template of every modality of the training items that the model lacks: the
    float64 mean of at most ``max_images`` of its items, evenly spread (deterministic, so every
    rank computes the same image). Returns the modality indices set."""
    if model.modality_templates is None:
        return []
    done = []
    modality = data._labels["modality"]
    for m in np.unique(modality):
        if model.has_modality_template(int(m)):
            continue
        items = np.flatnonzero(modality == m)
        items = items[np.linspace(0, len(items) - 1, min(max_images, len(items))).astype(int)]
        total = np.zeros(data.n_voxels, np.float64)
        for start in range(0, len(items), 64):
            total += data.__getitems__(items[start:start + 64])["x"][:, 0].double().sum(0).numpy()
        model.set_modality_template(int(m), total / len(items))
        done.append(int(m))
    return done


def _trainable(model: DiT, before: Mapping[str, nn.Parameter], config: TrainConfig
               ) -> dict[str, bool | Tensor]:
    """Per parameter: True (trains), False (frozen) or a bool mask of the entries that train.
    ``before`` holds the parameters as they were before surgery."""
    depth = len(model.blocks)
    tail = tuple(f"blocks.{i}." for i in range(max(depth - config.finetune_k, 0), depth))
    tail += ("final_layer.",)
    rules: dict[str, bool | Tensor] = {}
    for name, p in model.named_parameters():
        old = before.get(name)
        if config.finetune == "full" or old is None:  # everything trains, or a new head
            rules[name] = True
        elif config.finetune == "last-k-blocks" and name.startswith(tail):
            rules[name] = True
        elif old.shape == p.shape:  # pretrained, or a pretrained value copied by surgery
            rules[name] = False
        else:
            rules[name] = _new_entries(name, old.shape, p.shape)
    if not any(r is True or (isinstance(r, Tensor) and bool(r.any())) for r in rules.values()):
        raise GenbrainInputError(f"finetune '{config.finetune}' leaves nothing to train (give "
                                 "surgeries that add a head, or another finetune mode)")
    return rules


def _new_entries(name: str, old: torch.Size, new: torch.Size) -> Tensor:
    """Entries surgery added to an enlarged parameter: the new modality rows (the null row
    moved to the end keeps its pretrained value) or the new input channels of the patch
    embedding."""
    mask = torch.zeros(new, dtype=torch.bool)
    if name == "modality_embedder.weight":
        mask[old[0] - 1: new[0] - 1] = True
    elif name == "x_embedder.weight":
        mask[:, old[1]:] = True
    else:  # a surgery added in dit.py needs its rule here
        raise AssertionError(f"no rule for the enlarged parameter {name}")
    return mask


def _read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise GenbrainInputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise GenbrainInputError(f"{path}: not a readable training checkpoint "
                                 f"({type(err).__name__}: {err})") from err
    missing = [k for k in ("model", "ema", "step", "config") if k not in ckpt]
    if missing:
        raise GenbrainInputError(f"{path}: not a training checkpoint (missing {missing})")
    return ckpt


def _check_resume(path: Path, ckpt: Mapping, run: Mapping, n_items: int) -> None:
    """One-line error naming the first key where the checkpoint's run differs from this one."""
    old = ckpt["config"]
    diffs = [("training config key", k, old["train"].get(k), v) for k, v in run["train"].items()
             if k not in RESUMABLE_CHANGES]
    diffs.append(("surgeries", "", old.get("surgeries"), run["surgeries"]))
    diffs += [("model spec key", k, old["model"].get(k), run["model"].get(k))
              for k in {**old["model"], **run["model"]}]
    diffs.append(("number of training images", "", ckpt["data_position"]["n_items"], n_items))
    for what, key, a, b in diffs:
        if a != b:
            name = f"{what} '{key}'" if key else what
            raise GenbrainInputError(
                f"{path}: cannot resume: {name} is {_short(a)} in the checkpoint but "
                f"{_short(b)} in this run; use another output folder or delete the checkpoint")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain(obj: Any) -> Any:
    """JSON-like copy (tuples -> lists), so configs compare equal before and after saving."""
    return json.loads(json.dumps(obj))


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- ema + (1 - decay) (model - ema); lerp leaves a frozen (equal) entry bit-exact.
    Buffers (the fixed positional embedding) are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _draws(seed: int, step: int, slots: range, n_steps: int, shape: tuple[int, ...],
           label_dropout: float, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Timesteps (n,), label-drop mask (n,) and noise (n, *shape) for global-batch slots
    ``slots`` of ``step``: each slot has its own generator seeded with (seed, step, slot)."""
    t, drop, noise = [], [], []
    for j in slots:
        g = torch.Generator(device=device).manual_seed(_seed(seed, _ITEM, step, j))
        t.append(torch.randint(0, n_steps, (1,), generator=g, device=device))  # uniform
        drop.append(torch.rand(1, generator=g, device=device) < label_dropout)
        noise.append(torch.randn((1, *shape), generator=g, device=device))
    return torch.cat(t), torch.cat(drop), torch.cat(noise)


# --------------------------------------------------------------------------------------------
# Devices and processes
# --------------------------------------------------------------------------------------------


def _distributed() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group). torchrun sets
    RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT."""
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        return 0, 1, torch.device("cuda" if cuda else "cpu"), False
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else \
        torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, started


@contextlib.contextmanager
def _matmul_precision(device: torch.device) -> Iterator[None]:
    """TF32 matmuls on CUDA for the duration of training (restored afterwards)."""
    old = torch.get_float32_matmul_precision()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(config: TrainConfig, stores: StoreLike | Sequence[StoreLike],
          out_dir: str | os.PathLike, *, init_checkpoint: str | os.PathLike | None = None,
          surgeries: Sequence[Surgery] = (), token_centroids: Any = None, num_workers: int = 0,
          on_checkpoint: Callable[[int, Path], None] | None = None) -> TrainResult:
    """Train (or resume training) a DiT on image stores; see the module docstring.

    Args:
        config: the run's settings.
        stores: ImageStore(s) or their index.tsv path(s); their images are concatenated.
        out_dir: folder of ``checkpoint.pt``; an existing checkpoint there is resumed.
        init_checkpoint: pretrained checkpoint to fine-tune (its ``sampling_weights``); read
            again when a fine-tuning run resumes.
        surgeries: DiT surgeries applied after loading it, before the optimizer is built, e.g.
            ``[("add_disease_head", 2), ("extend_modalities", 1), "add_score_head"]``.
        token_centroids: (T, 3) token centroids, for ``pos_embed="centroid3d"``.
        num_workers: DataLoader worker processes reading the stores (0 = in this process).
        on_checkpoint: called on rank 0 as ``on_checkpoint(step, path)`` after each write.
    Returns:
        :class:`TrainResult` (checkpoint path, final step, per-step mean losses of this call).
    """
    rank, world, device, started = _distributed()
    try:
        with _matmul_precision(device):
            return _train(config, stores, Path(out_dir), init_checkpoint, surgeries,
                          token_centroids, num_workers, on_checkpoint, rank, world, device)
    finally:
        if started:
            dist.destroy_process_group()


def _open_data(config: TrainConfig, stores: StoreLike | Sequence[StoreLike], init: Mapping | None,
               init_path: Any, resume: Mapping | None, ckpt_path: Path) -> VoxelDataset:
    """The training items, their voxel count checked against the model to be trained."""
    stores = [stores] if isinstance(stores, (ImageStore, str, os.PathLike)) else list(stores)
    stores = [s if isinstance(s, ImageStore) else ImageStore(s) for s in stores]
    # The scalings: the resumed run's, else the pretrained age scaling, else fitted on the data.
    norms = None
    if resume is not None:
        norms = resume["config"]["norms"]
    elif init is not None:
        norms = {"age": init["config"]["norms"]["age"]}
    data = VoxelDataset(stores, modalities=config.modalities, norms=norms,
                        diagnosis_levels=config.diagnosis_levels,
                        score_column=config.score_column)
    if resume is not None:
        data.check_voxels(resume["config"]["model"]["n_voxels"], f"the checkpoint {ckpt_path}")
    elif init is not None:
        data.check_voxels(init["config"]["model"]["n_voxels"], f"the init checkpoint {init_path}")
    else:
        data.check_voxels(data.n_voxels, "the model (built for the first store)")
    return data


def _optimizer(model: DiT, rules: Mapping[str, bool | Tensor], config: TrainConfig
               ) -> tuple[torch.optim.AdamW, dict[str, Tensor]]:
    """AdamW over what trains, and the masks of partly trained tensors (on the model's device);
    frozen parameters stop requiring gradients."""
    params = dict(model.named_parameters())
    masks = {n: r.to(params[n].device) for n, r in rules.items() if isinstance(r, Tensor)}
    for name, p in params.items():
        p.requires_grad_(rules[name] is not False)
    groups = [{"params": [params[n] for n, r in rules.items() if r is True]},
              # partly frozen tensors: no weight decay, so their frozen entries stay exact
              {"params": [params[n] for n in masks], "weight_decay": 0.0}]
    cuda = next(iter(params.values())).is_cuda
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas,
                            weight_decay=config.weight_decay, fused=True if cuda else None)
    return opt, masks


def _train(config: TrainConfig, stores: StoreLike | Sequence[StoreLike], out_dir: Path,
           init_path: str | os.PathLike | None, surgeries: Sequence[Surgery],
           token_centroids: Any, num_workers: int,
           on_checkpoint: Callable[[int, Path], None] | None, rank: int, world: int,
           device: torch.device) -> TrainResult:
    B, cuda = config.global_batch, device.type == "cuda"
    bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)
    if B % world:
        raise GenbrainInputError(f"training config: global_batch {B} is not divisible by the "
                                 f"{world} processes")
    share = B // world
    micro = config.micro_batch or share
    if share % micro:
        raise GenbrainInputError(f"training config: micro_batch {micro} does not divide the "
                                 f"{share} images of each of the {world} processes")
    if config.finetune != "full" and init_path is None:
        raise GenbrainInputError(f"finetune '{config.finetune}' needs an init_checkpoint")
    surgeries = _parse_surgeries(surgeries)
    ckpt_path = out_dir / CHECKPOINT
    init = _read_checkpoint(init_path) if init_path is not None else None
    resume = _read_checkpoint(ckpt_path) if ckpt_path.exists() else None
    data = _open_data(config, stores, init, init_path, resume, ckpt_path)

    model = _build_model(config, data.n_voxels, init, init_path, token_centroids)
    before = dict(model.named_parameters())
    _operate(model, surgeries, config.seed)
    rules = _trainable(model, before, config)
    data.check_model(model)
    if resume is None:  # (a resumed run restores them from its checkpoint)
        new = _set_templates(model, data, config.template_images)
        if new and rank == 0:
            log.info("modality templates: mean images of modality indices %s", new)
    run_config = {"train": config.to_dict(), "model": _plain(model.spec()),
                  "norms": _plain(data.norms), "surgeries": _plain(surgeries),
                  "init_checkpoint": None if init_path is None else str(init_path)}
    if resume is not None:
        _check_resume(ckpt_path, resume, run_config, len(data))

    model.to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt, masks = _optimizer(model, rules, config)
    params = dict(model.named_parameters())
    step, position, saved = 0, (0, 0), None
    history: list[float] = []  # every step's loss since step 1, kept in the checkpoint
    if resume is not None:
        history = resume.get("losses", torch.zeros(0)).tolist()[: resume["step"]]
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["optimizer"])
        step, saved = resume["step"], resume["step"]
        position = (resume["data_position"]["epoch"], resume["data_position"]["offset"])
        torch.set_rng_state(resume["rng"]["torch"])  # unused by the loop; restored for callers
        if cuda and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume["rng"]["cuda"], device)
        if rank == 0:
            log.info("resuming %s at step %d", ckpt_path, step)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        for tmp in out_dir.glob(f".{CHECKPOINT.split('.')[0]}.*.pt"):  # left by a killed write
            tmp.unlink()

    net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None) \
        if world > 1 else model
    diffusion = GaussianDiffusion.linear(prediction=config.prediction)
    order = ItemOrder(len(data), config.seed)
    loader = DataLoader(data, batch_sampler=MicroBatchSampler(order, position, B, micro, rank,
                                                              world),
                        collate_fn=_collated, num_workers=num_workers, pin_memory=cuda,
                        generator=torch.Generator())  # keeps DataLoader off the global RNG
    batches = iter(loader)

    def save() -> None:
        state = {"model": model.state_dict(), "ema": ema.state_dict(),
                 "optimizer": opt.state_dict(), "step": step,
                 "data_position": {"epoch": position[0], "offset": position[1],
                                   "n_items": len(data)},
                 "rng": {"torch": torch.get_rng_state(),
                         "cuda": torch.cuda.get_rng_state(device) if cuda else None},
                 "losses": torch.tensor(history, dtype=torch.float64),
                 "config": run_config, "versions": {"torch": str(torch.__version__)}}
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        if on_checkpoint is not None:
            on_checkpoint(step, ckpt_path)

    losses: list[float] = []
    t_last, step_last, window = time.perf_counter(), step, []
    while step < config.steps:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for k in range(share // micro):
            batch = {n: v.to(device, non_blocking=True) for n, v in next(batches).items()}
            for n in ("x", "x_cond"):  # float16 stores: one exact cast per batch, on the device
                if n in batch:
                    batch[n] = batch[n].float()
            slots = range(rank * share + k * micro, rank * share + (k + 1) * micro)
            t, drop, noise = _draws(config.seed, step, slots, diffusion.num_timesteps,
                                    tuple(batch["x"].shape[1:]), config.label_dropout, device)
            labels = {n: v for n, v in batch.items() if n not in ("x", "x_cond")}

            def model_fn(x_t: Tensor, t_model: Tensor) -> Tensor:
                if "x_cond" in batch:  # image conditioning rides along as extra channels
                    x_t = torch.cat([x_t, batch["x_cond"]], dim=1)  # (m, C_in, V)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    return net(x_t, t_model, force_drop=drop, **labels)  # (m, 2C, V)

            last = k == share // micro - 1
            with contextlib.nullcontext() if world == 1 or last else net.no_sync():
                per_item = diffusion.training_losses(model_fn, batch["x"], t, noise=noise)["loss"]
                # sum / B per rank, times world because DDP averages gradients over ranks
                (per_item.sum() * (world / B)).backward()
            total += per_item.detach().sum()
        if world > 1:
            dist.all_reduce(total)
        loss = total.item() / B
        if not math.isfinite(loss):
            kept = "no checkpoint was written" if saved is None else \
                f"the checkpoint {ckpt_path} (step {saved}) is unchanged"
            raise TrainingDiverged(f"training diverged: the loss is {loss} at step {step + 1}; "
                                   f"stopped without saving, {kept}")
        for name, mask in masks.items():
            params[name].grad.mul_(mask)  # only the entries surgery added learn
        opt.step()
        _update_ema(ema, model, config.ema_decay)
        step += 1
        position = order.advance(position, B)
        losses.append(loss)
        history.append(loss)
        window.append(loss)
        if rank == 0 and (step % config.log_every == 0 or step == config.steps):
            now = time.perf_counter()
            rate = (step - step_last) / max(now - t_last, 1e-9)
            log.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %s", step, config.steps,
                     float(np.mean(window)), rate, _hms((config.steps - step) / rate))
            t_last, step_last, window = now, step, []
        if step % config.checkpoint_every == 0 or step == config.steps:
            if rank == 0:
                save()
            saved = step
    if world > 1:
        dist.barrier()  # no rank leaves before rank 0 has written the final checkpoint
    return TrainResult(ckpt_path, step, losses)


def load_for_sampling(checkpoint_path: str | os.PathLike, weights: str | None = None,
                      device: torch.device | str = "cpu"
                      ) -> tuple[DiT, dict[str, dict[str, float]], TrainConfig]:
    """A trained model ready to sample: (DiT in eval mode on ``device``, the label scalings
    ``{"age": {"mean", "std"}, "score": ...}`` to z-score sampling covariates with, the run's
    TrainConfig). ``weights``: "ema" or "model"; None = the run's ``sampling_weights``."""
    ckpt = _read_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(ckpt["config"]["train"], f"{checkpoint_path}: config")
    weights = weights or config.sampling_weights
    if weights not in WEIGHTS:
        raise GenbrainInputError(f"weights '{weights}' is unknown; expected one of "
                                 f"{', '.join(WEIGHTS)}")
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation leaves the RNG alone
        model = dit_from_spec(ckpt["config"]["model"])
    model.load_state_dict(ckpt[weights])
    return model.to(device).eval(), ckpt["config"]["norms"], config


def loss_history(checkpoint_path: str | os.PathLike) -> np.ndarray:
    """The mean loss of every optimizer step (1..step) recorded in a checkpoint, float64."""
    ckpt = _read_checkpoint(checkpoint_path)
    losses = ckpt.get("losses")
    if losses is None:
        raise GenbrainInputError(f"{checkpoint_path}: the checkpoint holds no loss history "
                                 "(written by an older version)")
    return losses.numpy().astype(np.float64)
