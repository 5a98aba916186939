"""Clinical-score regression from standard-space images, and the synthetic-augmentation sweep.

The paper's Methods "Clinical Application" (Fig. 6c-f): a 3D ResNet predicts a clinical score
(NIHSS, WAB-AQ) from one image per subject; its training set is augmented with
``round(ratio * n_train)`` synthetic images for ratios 0..3 by 0.1, five seeds per ratio, and
the ratio with the lowest mean validation MAE is compared with ratio 0 on the test set.

Model. :class:`ScoreRegressor` is a MONAI ResNet trunk with a dropout + linear head whose output
is ``sigmoid(z) * score_max`` (scores live in [0, score_max]). ``arch``:
- ``resnet10-narrow`` (default): ``ResNet("basic", [1, 1, 1, 1], [32, 32, 64, 128],
  conv1_t_size=3)``, the closest MONAI build of the GenBrain code's regressor (widths 32/32/64/128,
  3^3 stem, dropout 0.5 before the head). The default because it is the network the authors ran
  and because the demo must fit 2 CPU cores: 0.95 M parameters against resnet10's 14.4 M; one
  Adam step on 8 images of 72 x 90 x 76 took 9 s against 36 s on 2 shared CPU cores.
- ``resnet10``: MONAI's ``resnet10`` widths (64/128/256/512, 7^3 stem; MedicalNet's ResNet-10),
  always ``pretrained=False``: the pretrained weights download at run time.
Input: voxel vectors scattered into the crop ``[9:81, 10:100, 1:77]`` of the 2 mm grid (72 x 90
x 76, the GenBrain code's crop; 0 outside the brain mask), optionally average-pooled by ``pool``
(1 = the paper; 2 = 4 mm, ~8x less compute, for CPU demos).

Fit. :func:`fit` trains with MSE on the raw score, Adam (lr 5e-5) and ``batch_size`` images per
step (32 NIHSS, 8 WAB-AQ) for ``epochs`` epochs (paper 50), evaluates the validation MAE after
every epoch and keeps the weights of the epoch with the lowest one (ties: the earliest). It
reuses the DiT trainer's machinery from :mod:`genbrain.training`: ``seed_of`` for independent
seeded streams, :class:`~genbrain.training.data.ItemOrder` (epoch e's item order is a
permutation drawn from (seed, e)), ``atomic_path`` checkpoints, ``hms`` ETAs. Every random
number is a function of (seed, epoch): initial weights from (seed, init), dropout of epoch e
from a generator seeded with (seed, dropout, e) inside ``fork_rng``, so a checkpoint (written
atomically after every epoch: model, optimizer, best weights, history) resumes bitwise on CPU
and the caller's RNG is never touched. The test split is never passed to :func:`fit`, so it
cannot influence the epoch chosen.

Split. :func:`genbrain.splits.score_split`: 3:1:1 train/val/test over participants, seeded and
stratified by score (see there). It is drawn once and shared by every (ratio, seed) job, as in
the paper (the generator was fine-tuned on the training split only); :func:`split_images`
takes each part's images from the store.

Sweep. :func:`sweep_job` runs one (ratio, seed) and returns its one-row table (a cluster runs
the jobs in parallel); :func:`synthetic_rows` picks the pool rows, nested across ratios for a
seed; :func:`summarise_sweep` picks the ratio by mean validation MAE (validation only) and
tests test MAE and r at that ratio against ratio 0 across seeds (Welch's two-sided t-test by
default; see there), with 95% CIs = mean +- 1.96 x SE as the paper.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_path
from genbrain.seeds import seed_of
from genbrain.space import StandardSpace, standard_space
from genbrain.splits import SCORE_SPLITS
from genbrain.stats.correlation import pearson
from genbrain.store import ImageStore
from genbrain.tables import check_scores, row_name
from genbrain.training.config import dataclass_from_dict, plain
from genbrain.training.data import ItemOrder
from genbrain.training.loop import hms

log = logging.getLogger(__name__)

PAPER_CROP: tuple[tuple[int, int], ...] = ((9, 81), (10, 100), (1, 77))  # 72 x 90 x 76
ARCHS = ("resnet10-narrow", "resnet10")
TESTS = ("welch", "student", "paired")
CHECKPOINT = "checkpoint.pt"
#: RegressConfig keys a resumed fit may change: they do not alter the trajectory so far.
RESUMABLE_CHANGES = ("epochs", "eval_batch")
METRICS = ("val_mae", "val_r", "test_mae", "test_r")
# seed_of streams: the trainer's STREAM_* are 1..3, splits.SCORE_SPLIT_STREAM is 14
_INIT, _DROPOUT, _POOL = 11, 12, 13


# --------------------------------------------------------------------------------------------
# Settings and inputs
# --------------------------------------------------------------------------------------------


@dataclass
class RegressConfig:
    """Settings of one regressor fit; saved in its checkpoint.

    ``score_column`` (store/table column) and ``score_max`` (its declared maximum, e.g. 42 for
    NIHSS, 100 for WAB-AQ; the output is sigmoid x score_max); ``arch`` (one of ``ARCHS``),
    ``dropout`` before the linear head (0.5 as the GenBrain code); ``crop`` ((start, stop) voxel
    indices per axis of the 91x109x91 grid), ``pool`` (average-pooling factor after the crop);
    ``epochs``, ``batch_size`` (images per Adam step), ``lr``, ``seed``; ``eval_batch`` images
    per forward pass when predicting (memory only, results do not depend on it).
    """

    score_column: str = "score"
    score_max: float = 42.0
    arch: str = "resnet10-narrow"
    dropout: float = 0.5
    crop: tuple[tuple[int, int], ...] = PAPER_CROP
    pool: int = 1
    epochs: int = 50
    batch_size: int = 32
    lr: float = 5e-5
    seed: int = 0
    eval_batch: int = 16

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> None:
            raise GenbrainInputError(
                f"regression config: '{key}' is {getattr(self, key)!r}; expected {expected}")
        if self.arch not in ARCHS:
            bad("arch", f"one of {', '.join(ARCHS)}")
        if not isinstance(self.score_column, str) or not self.score_column:
            bad("score_column", "a column name")
        if not (isinstance(self.score_max, (int, float)) and self.score_max > 0):
            bad("score_max", "a number > 0 (the score's declared maximum)")
        for key in ("pool", "epochs", "batch_size", "eval_batch"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "an integer >= 1")
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "an integer >= 0")
        if not self.lr > 0:
            bad("lr", "a number > 0")
        if not 0 <= self.dropout < 1:
            bad("dropout", "a number in [0, 1)")
        try:
            self.crop = tuple((int(a), int(b)) for a, b in self.crop)
        except (TypeError, ValueError):
            bad("crop", "three [start, stop] voxel index pairs")
        if len(self.crop) != 3:
            bad("crop", "three [start, stop] voxel index pairs")
        self.score_max = float(self.score_max)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "regression config"
                  ) -> RegressConfig:
        """Build from a plain dict (a config section, a checkpoint); unknown keys are an error."""
        return dataclass_from_dict(cls, values, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-like dict (lists, not tuples), as stored in checkpoints."""
        return plain(dataclasses.asdict(self))


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


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class ScoreRegressor(nn.Module):
    """MONAI 3D ResNet trunk + dropout + linear head; (n, 1, X, Y, Z) -> (n,) scores in
    [0, score_max] (sigmoid x score_max)."""

    def __init__(self, arch: str, score_max: float, dropout: float = 0.5):
        super().__init__()
        from monai.networks.nets import ResNet, resnet10  # ~1 s import, only when a model is made

        if arch == "resnet10-narrow":  # the GenBrain code's widths and 3^3 stem
            self.trunk = ResNet("basic", [1, 1, 1, 1], [32, 32, 64, 128], spatial_dims=3,
                                n_input_channels=1, conv1_t_size=3, feed_forward=False)
            width = 128
        elif arch == "resnet10":
            # pretrained=False always: MedicalNet weights would download at run time
            self.trunk = resnet10(pretrained=False, spatial_dims=3, n_input_channels=1,
                                  feed_forward=False)
            width = 512
        else:
            raise GenbrainInputError(f"regression config: 'arch' is {arch!r}; expected one of "
                                     f"{', '.join(ARCHS)}")
        # The head replaces MONAI's fc (num_classes=1) so dropout can sit in front of it.
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 1))
        self.register_buffer("score_max", torch.tensor(float(score_max)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        z = self.head(self.trunk(x))[:, 0]  # (n,)
        return torch.sigmoid(z) * self.score_max  # bounded like the score


def _build_model(config: RegressConfig) -> ScoreRegressor:
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(seed_of(config.seed, _INIT))
        return ScoreRegressor(config.arch, config.score_max, config.dropout)


# --------------------------------------------------------------------------------------------
# Fit and predict
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: ScoreRegressor, images: ScoreImages, volumes: CropVolumes,
            batch: int = 16) -> np.ndarray:
    """(n,) float64 predicted scores of ``images`` (model in eval mode: no dropout, BatchNorm
    running statistics), ``batch`` images per forward pass."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(volumes(images.vectors(range(i, min(i + batch, len(images))))).to(device))
           for i in range(0, len(images), batch)]
    model.train(was)
    return torch.cat(out).double().cpu().numpy()


@dataclass
class FitResult:
    """What :func:`fit` did: ``checkpoint`` path; ``model`` with the chosen epoch's weights (eval
    mode); ``chosen_epoch`` (1-based) and its ``val_mae``; ``history``: one row per epoch
    (epoch, train_loss (score units^2), val_mae, val_r, seconds)."""

    checkpoint: Path
    model: ScoreRegressor
    chosen_epoch: int
    val_mae: float
    history: pd.DataFrame


def fit(config: RegressConfig, train: ScoreImages, val: ScoreImages,
        out_dir: str | os.PathLike, *, space: StandardSpace | None = None,
        on_epoch: Callable[[int, Path], None] | None = None) -> FitResult:
    """Train (or resume training) a :class:`ScoreRegressor`; see the module docstring.

    Args:
        config: the fit's settings.
        train, val: training images (real and synthetic) and validation images (real).
        out_dir: folder of ``checkpoint.pt``; an existing checkpoint there is resumed.
        space: the grid the vectors live on (tests pass a small one).
        on_epoch: called as ``on_epoch(epoch, checkpoint)`` after each epoch's checkpoint.
    Returns:
        :class:`FitResult` with the weights of the epoch of lowest validation MAE.
    """
    if len(train) == 0 or len(val) == 0:
        raise GenbrainInputError(f"regression: no {'training' if not len(train) else 'val'} "
                                 f"images in {train.source if not len(train) else val.source}")
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    volumes = CropVolumes(config.crop, config.pool, space)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = {"config": config.to_dict(), "train": train.fingerprint(), "val": val.fingerprint(),
           "n_train": len(train), "n_val": len(val)}
    resume = _read_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if resume is not None:
        _check_resume(ckpt_path, resume["run"], run)
        if resume["epoch"] > config.epochs:
            raise GenbrainInputError(f"{ckpt_path}: cannot resume: the checkpoint is at epoch "
                                     f"{resume['epoch']}, past 'epochs' = {config.epochs}")

    model = _build_model(config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    epoch, best_epoch, best_mae = 0, 0, math.inf
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        epoch, best_epoch, best_mae = resume["epoch"], resume["best_epoch"], resume["best_mae"]
        best_state, history = resume["best_model"], list(resume["history"])
        log.info("resuming %s at epoch %d", ckpt_path, epoch)
    out_dir.mkdir(parents=True, exist_ok=True)
    for tmp in out_dir.glob(f".{CHECKPOINT.split('.')[0]}.*.pt"):  # left by a killed write
        tmp.unlink()

    order = ItemOrder(len(train), config.seed)
    forked = [device] if device.type == "cuda" else []
    t_start, start_epoch = time.perf_counter(), epoch
    while epoch < config.epochs:
        t0 = time.perf_counter()
        perm = order.permutation(epoch).numpy()
        total = 0.0
        with torch.random.fork_rng(devices=forked):  # dropout draws: a function of (seed, e)
            torch.manual_seed(seed_of(config.seed, _DROPOUT, epoch))
            for i in range(0, len(perm), config.batch_size):
                items = perm[i:i + config.batch_size]
                x = volumes(train.vectors(items)).to(device)  # (b, 1, X, Y, Z)
                y = torch.from_numpy(train.y[items]).to(device)  # (b,)
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.mse_loss(model(x), y)
                if not torch.isfinite(loss):
                    raise GenbrainInputError(
                        f"regression diverged: the loss is {loss.item()} in epoch {epoch + 1}; "
                        f"{ckpt_path} keeps epoch {epoch}")
                loss.backward()
                opt.step()
                total += loss.item() * len(items)
        pred = predict(model, val, volumes, config.eval_batch)
        mae, r = float(np.mean(np.abs(pred - val.y))), pearson(pred, val.y)
        epoch += 1
        if mae < best_mae:  # strict: ties keep the earlier epoch
            best_epoch, best_mae = epoch, mae
            best_state = copy.deepcopy(model.state_dict())
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": total / len(perm), "val_mae": mae,
                        "val_r": r, "seconds": seconds})
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                 "best_epoch": best_epoch, "best_mae": best_mae, "best_model": best_state,
                 "history": history, "run": run,
                 "versions": {"torch": str(torch.__version__)}}
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        rate = (time.perf_counter() - t_start) / (epoch - start_epoch)  # s per epoch
        log.info("epoch %d/%d  train loss %.4g  val MAE %.4g  r %.3f  (best %.4g @ %d)  "
                 "%.1f s  ETA %s", epoch, config.epochs, total / len(perm), mae, r, best_mae,
                 best_epoch, seconds, hms(rate * (config.epochs - epoch)))
        if on_epoch is not None:
            on_epoch(epoch, ckpt_path)
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(ckpt_path, model, best_epoch, best_mae, pd.DataFrame(
        history, columns=["epoch", "train_loss", "val_mae", "val_r", "seconds"]))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise GenbrainInputError(f"{path}: not a readable regression checkpoint "
                                 f"({type(err).__name__}: {err})") from err
    missing = [k for k in ("model", "optimizer", "epoch", "best_model", "run") if k not in ckpt]
    if missing:
        raise GenbrainInputError(f"{path}: not a regression checkpoint (missing {missing})")
    return ckpt


def _check_resume(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """One-line error naming the first setting or input where the checkpoint's fit differs."""
    diffs = [(f"config key '{k}'", old["config"].get(k), v) for k, v in new["config"].items()
             if k not in RESUMABLE_CHANGES]
    diffs += [(f"{k} images", old.get(k), new[k]) for k in ("n_train", "n_val", "train", "val")]
    for what, a, b in diffs:
        if a != b:
            raise GenbrainInputError(
                f"{path}: cannot resume: {what} is {_short(a)} in the checkpoint but {_short(b)} "
                "in this run; use another output folder or delete the checkpoint")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------
# The ratio sweep
# --------------------------------------------------------------------------------------------


def n_synthetic(ratio: float, n_train: int) -> int:
    """round(ratio * n_train), halves up (0.5 * 3 -> 2), robust to 0.1-step float error."""
    return math.floor(ratio * n_train + 0.5 + 1e-9)


def synthetic_rows(n_pool: int, n_train: int, ratio: float, seed: int,
                   source: str = "synthetic pool") -> np.ndarray:
    """(round(ratio * n_train),) rows of the synthetic pool used at ``ratio`` with ``seed``: the
    first rows of a permutation seeded by (seed, pool), so a larger ratio adds rows to a
    smaller one's (nested) and a seed sees its own subset. One-line error when the pool is too
    small or the ratio negative."""
    if ratio < 0:
        raise GenbrainInputError(f"regression sweep: ratio {ratio} is negative")
    k = n_synthetic(ratio, n_train)
    if k > n_pool:
        raise GenbrainInputError(
            f"{source}: ratio {ratio:g} of {n_train} training images needs {k} synthetic images "
            f"but the pool holds {n_pool}; synthesize at least {k} or lower the ratio grid")
    perm = np.random.default_rng(seed_of(seed, _POOL)).permutation(n_pool)
    return perm[:k]


def sweep_job(config: RegressConfig, splits: Mapping[str, ScoreImages],
              pool: ScoreImages | None, ratio: float, seed: int, out_dir: str | os.PathLike,
              *, space: StandardSpace | None = None) -> pd.DataFrame:
    """One (ratio, seed) job of the sweep: fit on the real training split plus
    ``round(ratio * n_train)`` pool images (:func:`synthetic_rows`), choose the epoch by
    validation MAE, then predict the test split once with that epoch's weights.

    ``splits``: :func:`split_images` output; ``pool``: the synthetic images (None only for
    ratio 0); ``seed`` replaces ``config.seed``; ``out_dir``: this job's checkpoint folder.
    Returns one row: ratio, seed, n_real, n_synthetic, epochs, chosen_epoch, val_mae, val_r,
    test_mae, test_r (scores in the score's units).
    """
    config = dataclasses.replace(config, seed=seed)
    real = splits["train"]
    k = n_synthetic(ratio, len(real))
    train = real
    if k > 0:
        if pool is None:
            raise GenbrainInputError(f"regression sweep: ratio {ratio:g} needs a synthetic pool")
        train = real + pool.subset(synthetic_rows(len(pool), len(real), ratio, seed,
                                                  pool.source))
    result = fit(config, train, splits["val"], out_dir, space=space)
    volumes = CropVolumes(config.crop, config.pool, space)
    test = splits["test"]
    pred = predict(result.model, test, volumes, config.eval_batch)
    return pd.DataFrame([{
        "ratio": float(ratio), "seed": int(seed), "n_real": len(real), "n_synthetic": k,
        "epochs": config.epochs, "chosen_epoch": result.chosen_epoch,
        "val_mae": result.val_mae,
        "val_r": float(result.history["val_r"].iloc[result.chosen_epoch - 1]),
        "test_mae": float(np.mean(np.abs(pred - test.y))), "test_r": pearson(pred, test.y)}])


@dataclass
class SweepSummary:
    """What :func:`summarise_sweep` found.

    ``per_ratio``: one row per (ratio, metric) with n_seeds, mean, se, ci_low, ci_high (mean
    +- 1.96 SE); ``comparison``: one row per test metric (test_mae, test_r): the mean and CI at
    ratio 0 and at the chosen ratio, difference (chosen - ratio 0), change_pct, t, p, test;
    ``chosen_ratio``: the ratio of lowest mean validation MAE (ties: the smallest ratio).
    """

    per_ratio: pd.DataFrame
    comparison: pd.DataFrame
    chosen_ratio: float


def summarise_sweep(table: pd.DataFrame, test: str = "welch",
                    source: str = "sweep table") -> SweepSummary:
    """Choose the ratio by mean validation MAE and compare it with ratio 0 on the test split.

    ``table``: the concatenated :func:`sweep_job` rows. The choice reads ``val_mae`` only, so
    the test metrics stay an unbiased estimate. ``test`` (two-sided, across seeds):
    ``welch`` (default; ``scipy.stats.ttest_ind(equal_var=False)``): the runs at two ratios are
    treated as independent samples: they share a seed's initial weights, but their training
    sets, hence their data order and trajectories, differ, and the paper says "two-sided
    t-tests" here where it says "paired" elsewhere; Welch because augmentation may change the
    seed-to-seed variance (with equal seed counts t equals Student's, only the df differ).
    ``student``: pooled variance; ``paired``: ``ttest_rel`` on the seeds both ratios have.
    """
    from scipy import stats

    if test not in TESTS:
        raise GenbrainInputError(f"regression summary: 'test' is {test!r}; expected one of "
                                 f"{', '.join(TESTS)}")
    missing = [c for c in ("ratio", "seed", *METRICS) if c not in table.columns]
    if missing:
        raise GenbrainInputError(f"{source}: missing columns {missing}")
    dup = table.duplicated(["ratio", "seed"])
    if dup.any():
        row = table[dup].iloc[0]
        raise GenbrainInputError(f"{source}: ratio {row['ratio']:g} seed {row['seed']} appears "
                                 "more than once; expected one row per (ratio, seed)")
    if not (table["ratio"] == 0).any():
        raise GenbrainInputError(f"{source}: no rows at ratio 0 (the baseline)")
    rows = []
    for ratio, g in table.groupby("ratio", sort=True):
        for metric in METRICS:
            v = g[metric].to_numpy(np.float64)
            v = v[np.isfinite(v)]
            mean = float(v.mean()) if len(v) else float("nan")
            se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            rows.append({"ratio": float(ratio), "metric": metric, "n_seeds": len(v),
                         "mean": mean, "se": se, "ci_low": mean - 1.96 * se,
                         "ci_high": mean + 1.96 * se})
    per_ratio = pd.DataFrame(rows)
    val = per_ratio[per_ratio["metric"] == "val_mae"].sort_values("ratio")
    chosen = float(val["ratio"].iloc[int(np.nanargmin(val["mean"].to_numpy()))])

    comparison = []
    base_rows, best_rows = table[table["ratio"] == 0], table[table["ratio"] == chosen]
    for metric in ("test_mae", "test_r"):
        a = base_rows.set_index("seed")[metric]
        b = best_rows.set_index("seed")[metric]
        if test == "paired":
            common = sorted(set(a.index) & set(b.index))
            res = stats.ttest_rel(b[common], a[common], nan_policy="omit")
        else:
            res = stats.ttest_ind(b, a, equal_var=test == "student", nan_policy="omit")
        pa = per_ratio[(per_ratio["ratio"] == 0) & (per_ratio["metric"] == metric)].iloc[0]
        pb = per_ratio[(per_ratio["ratio"] == chosen) & (per_ratio["metric"] == metric)].iloc[0]
        diff = pb["mean"] - pa["mean"]
        comparison.append({
            "metric": metric, "ratio_base": 0.0, "mean_base": pa["mean"],
            "ci_low_base": pa["ci_low"], "ci_high_base": pa["ci_high"],
            "ratio_chosen": chosen, "mean_chosen": pb["mean"], "ci_low_chosen": pb["ci_low"],
            "ci_high_chosen": pb["ci_high"], "difference": diff,
            "change_pct": 100 * diff / abs(pa["mean"]) if pa["mean"] else float("nan"),
            "t": float(res.statistic), "p": float(res.pvalue), "test": test,
            "n_seeds_base": int(pa["n_seeds"]), "n_seeds_chosen": int(pb["n_seeds"])})
    return SweepSummary(per_ratio, pd.DataFrame(comparison), chosen)


# --------------------------------------------------------------------------------------------
# Matched real/synthetic examples (Fig. 6c, e)
# --------------------------------------------------------------------------------------------


def match_pairs(real: pd.DataFrame, synthetic: pd.DataFrame, score_column: str,
                n_pairs: int = 4) -> pd.DataFrame:
    """Real subjects at evenly spaced score quantiles, each with the synthetic image of the
    same sex nearest in (age, score), distances in units of the real table's SD; no synthetic
    image is used twice. ``real``, ``synthetic``: tables with age, sex and the score (e.g.
    store indices). Returns one row per pair: real_row, synthetic_row (positions in the
    tables), participant_id, sex, age_real, age_synthetic, score_real, score_synthetic,
    sex_matched (False only when no unused synthetic image of that sex is left)."""
    for name, t in (("real", real), ("synthetic", synthetic)):
        missing = [c for c in ("age", "sex", score_column) if c not in t.columns]
        if missing:
            raise GenbrainInputError(f"{name} table: missing columns {missing}")
    n_pairs = min(n_pairs, len(real), len(synthetic))
    ra, rs = real["age"].to_numpy(np.float64), real[score_column].to_numpy(np.float64)
    sa, ss = synthetic["age"].to_numpy(np.float64), synthetic[score_column].to_numpy(np.float64)
    age_sd, score_sd = (float(np.std(v)) or 1.0 for v in (ra, rs))
    order = np.argsort(rs, kind="stable")
    picks = order[np.linspace(0, len(order) - 1, n_pairs).round().astype(int)]
    used = np.zeros(len(synthetic), bool)
    rows = []
    for i in picks:
        dist = ((sa - ra[i]) / age_sd) ** 2 + ((ss - rs[i]) / score_sd) ** 2
        same = (synthetic["sex"].to_numpy() == real["sex"].iloc[i]) & ~used
        pool = same if same.any() else ~used
        j = int(np.flatnonzero(pool)[np.argmin(dist[pool])])
        used[j] = True
        rows.append({"real_row": int(i), "synthetic_row": j,
                     "participant_id": real["participant_id"].iloc[i]
                     if "participant_id" in real.columns else str(i),
                     "sex": real["sex"].iloc[i], "age_real": ra[i], "age_synthetic": sa[j],
                     "score_real": rs[i], "score_synthetic": ss[j],
                     "sex_matched": bool(same.any())})
    return pd.DataFrame(rows)
