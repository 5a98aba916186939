"""Fitting the clinical-score regressor, and predicting with it.

Fit. :func:`fit` trains with MSE on the raw score, Adam (lr 5e-5) and ``batch_size`` images per
step (32 NIHSS, 8 WAB-AQ) for ``epochs`` epochs (paper 50), evaluates the validation MAE after
every epoch and keeps the weights of the epoch with the lowest one (ties: the earliest). It
reuses the DiT trainer's machinery from :mod:`genbrain.training`: ``seed_of`` for independent
seeded streams, :class:`~genbrain.training.data.ItemOrder` (epoch e's item order is a
permutation drawn from (seed, e)), :mod:`~genbrain.training.checkpoints` (reading with one-line
errors, refusing to resume a changed run, atomic writes), and writes its ETAs as the trainer
does (:func:`genbrain.progress.hms`). Every random number is a function of (seed, epoch):
initial weights from (seed, init), dropout of epoch e from a generator seeded with (seed,
dropout, e) inside ``fork_rng``, so a checkpoint (written atomically after every epoch: model,
optimizer, best weights, history) resumes bitwise on CPU and the caller's RNG is never
touched. The test split is never passed to :func:`fit`, so it
cannot influence the epoch chosen.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from genbrain.clinical.config import RESUMABLE_CHANGES, STREAM_DROPOUT, RegressConfig
from genbrain.clinical.data import CropVolumes, ScoreImages
from genbrain.clinical.network import ScoreRegressor, build_regressor
from genbrain.errors import GenbrainInputError
from genbrain.progress import hms
from genbrain.seeds import seed_of
from genbrain.space import StandardSpace
from genbrain.stats.correlation import pearson
from genbrain.training.checkpoints import (
    check_same_run,
    clear_killed_writes,
    read_checkpoint,
    save_checkpoint,
)
from genbrain.training.config import CHECKPOINT
from genbrain.training.data import ItemOrder

log = logging.getLogger(__name__)

#: keys every regression checkpoint has (besides best_epoch, best_mae, history, versions)
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "best_model", "run")


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
    resume = (read_checkpoint(ckpt_path, CHECKPOINT_KEYS, "regression")
              if ckpt_path.exists() else None)
    if resume is not None:
        check_same_run(ckpt_path, _resume_diffs(resume["run"], run))
        if resume["epoch"] > config.epochs:
            raise GenbrainInputError(f"{ckpt_path}: cannot resume: the checkpoint is at epoch "
                                     f"{resume['epoch']}, past 'epochs' = {config.epochs}")

    model = build_regressor(config).to(device).train()
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
    clear_killed_writes(ckpt_path)

    order = ItemOrder(len(train), config.seed)
    forked = [device] if device.type == "cuda" else []
    t_start, start_epoch = time.perf_counter(), epoch
    while epoch < config.epochs:
        t0 = time.perf_counter()
        perm = order.permutation(epoch).numpy()
        total = 0.0
        with torch.random.fork_rng(devices=forked):  # dropout draws: a function of (seed, e)
            torch.manual_seed(seed_of(config.seed, STREAM_DROPOUT, epoch))
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
                 "history": history, "run": run}
        save_checkpoint(ckpt_path, state)
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


def _resume_diffs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, the checkpoint's value, this run's) for every setting and input a resume keeps."""
    diffs = [(f"config key '{k}'", old["config"].get(k), v) for k, v in new["config"].items()
             if k not in RESUMABLE_CHANGES]
    diffs += [(f"{k} images", old.get(k), new[k]) for k in ("n_train", "n_val", "train", "val")]
    return diffs
