"""Checkpoints: reading them, checking a resume against them, writing them, loading a model to
sample.

Every resumable fit (the DiT trainer, :mod:`genbrain.training.loop`; the clinical regressor,
:mod:`genbrain.clinical.fit`) uses the same machinery: :func:`read_checkpoint` (one-line errors
for a missing, unreadable or foreign file), :func:`check_same_run` (a resume must continue the
run that wrote the checkpoint: one-line error naming the first setting that differs),
:func:`clear_killed_writes` and :func:`save_checkpoint` (atomic: a reader sees the previous
checkpoint or the new one, never a partial file). :func:`check_resume` is the DiT trainer's run
description on top of :func:`check_same_run`.

The DiT trainer's checkpoint (``checkpoint.pt``) holds ``model``, ``ema`` (state dicts),
``optimizer``, ``step``, ``data_position`` (epoch, offset, n_items), ``rng`` (the global torch
and CUDA states), ``losses`` (float64: the mean loss of every step since step 1) and ``config``
= {train: TrainConfig as a dict (the model's conditions among them), model: DiT.spec(), norms
(label scalings), ranges (of age and score seen in training), surgeries, init_checkpoint}; see
:mod:`genbrain.training.loop`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genbrain.conditions import Conditions
from genbrain.errors import GenbrainInputError
from genbrain.io import CHECKPOINT_KEYS, atomic_path
from genbrain.model.dit import SPEC_DEFAULTS, DiT, dit_from_spec
from genbrain.training.config import RESUMABLE_CHANGES, WEIGHTS, TrainConfig


def read_checkpoint(path: str | os.PathLike, keys: Sequence[str] = CHECKPOINT_KEYS,
                    kind: str = "training") -> dict[str, Any]:
    """A checkpoint as a dict (CPU tensors, plain data only: ``weights_only``); one-line errors
    for a missing file, an unreadable one, or one that lacks any of ``keys`` (default: a DiT
    training checkpoint's). ``kind`` names what was expected in the messages."""
    path = Path(path)
    if not path.exists():
        raise GenbrainInputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise GenbrainInputError(f"{path}: not a readable {kind} checkpoint "
                                 f"({type(err).__name__}: {err})") from err
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise GenbrainInputError(f"{path}: not a {kind} checkpoint (missing {missing})")
    return ckpt


def check_resume(path: Path, ckpt: Mapping, run: Mapping, n_items: int) -> None:
    """One-line error naming the first key where the checkpoint's run differs from this one."""
    old = ckpt["config"]
    # an older checkpoint lacks the keys added since: they mean their defaults
    train = {**TrainConfig().to_dict(), **old["train"]}
    spec = {**SPEC_DEFAULTS, **old["model"]}
    diffs = [("training config key", k, train.get(k), v) for k, v in run["train"].items()
             if k not in RESUMABLE_CHANGES]
    diffs.append(("surgeries", "", old.get("surgeries"), run["surgeries"]))
    diffs += [("model spec key", k, spec.get(k), run["model"].get(k))
              for k in {**spec, **run["model"]}]
    diffs.append(("number of training images", "", ckpt["data_position"]["n_items"], n_items))
    check_same_run(path, [(f"{what} '{key}'" if key else what, a, b)
                          for what, key, a, b in diffs])


def check_same_run(path: Path, diffs: Iterable[tuple[str, Any, Any]]) -> None:
    """Refuse to resume a different run: ``diffs`` holds (what, the checkpoint's value, this
    run's value) for every setting and input a resume must keep; a one-line error names the
    first that differ, with both values."""
    for what, a, b in diffs:
        if a != b:
            raise GenbrainInputError(
                f"{path}: cannot resume: {what} is {_short(a)} in the checkpoint but "
                f"{_short(b)} in this run; use another output folder or delete the checkpoint")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def clear_killed_writes(path: Path) -> None:
    """Make ``path``'s folder, and delete the temporary files a killed :func:`save_checkpoint`
    of ``path`` left in it (:func:`genbrain.io.atomic_path` names them ``.<stem>.*<suffix>``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for tmp in path.parent.glob(f".{path.name.split('.')[0]}.*{''.join(path.suffixes)}"):
        tmp.unlink()


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` plus ``versions`` (the torch version) to ``path`` atomically: a reader,
    or a resume after a kill, finds the previous checkpoint or this one, never a partial file."""
    with atomic_path(path) as tmp:
        torch.save({**state, "versions": {"torch": str(torch.__version__)}}, tmp)


def load_for_sampling(checkpoint_path: str | os.PathLike, weights: str | None = None,
                      device: torch.device | str = "cpu"
                      ) -> tuple[DiT, dict[str, dict[str, float]], TrainConfig]:
    """A trained model ready to sample: (DiT in eval mode on ``device``, the label scalings
    ``{"age": {"mean", "std"}, "score": ...}`` to z-score sampling covariates with, the run's
    TrainConfig). ``weights``: "ema" or "model"; None = the run's ``sampling_weights``. The
    model's ``voxel_layout`` is the checkpoint's layout record."""
    ckpt = read_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(ckpt["config"]["train"], f"{checkpoint_path}: config")
    weights = weights or config.sampling_weights
    if weights not in WEIGHTS:
        raise GenbrainInputError(f"weights '{weights}' is unknown; expected one of "
                                 f"{', '.join(WEIGHTS)}")
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation leaves the RNG alone
        model = dit_from_spec(ckpt["config"]["model"])
    model.load_state_dict(ckpt[weights])
    model.voxel_layout = ckpt["config"].get("layout")  # what the sampler converts samples from
    return model.to(device).eval(), ckpt["config"]["norms"], config


def random_init_checkpoint(init_path: str | os.PathLike, out_path: str | os.PathLike,
                           seed: int) -> Path:
    """A training checkpoint of ``init_path``'s model with fresh random weights -> ``out_path``.

    What a from-scratch control needs to go through the fine-tuning job unchanged: the same
    architecture (``config.model``, the DiT's own initialisation drawn from ``seed``: adaLN-Zero
    and zero final layer, as a pretraining run starts), the same training settings record
    (architecture keys, ``sampling_weights``), the same label scalings and covariate ranges
    (a standardisation, not learned weights), voxel layout and fixed buffers (the positional
    embedding); no modality template (a
    fine-tune sets the template of each of its modalities from its own training images),
    step 0, an empty loss history. ``model`` and ``ema`` are the same weights. Written
    atomically; ``config.meta.random_init_of`` names the source checkpoint."""
    from genbrain.seeds import seed_of
    from genbrain.training.config import STREAM_INIT

    init = read_checkpoint(init_path)
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG left alone
        torch.manual_seed(seed_of(int(seed), STREAM_INIT))
        model = dit_from_spec(init["config"]["model"])
    if model.modality_templates is not None:
        model.modality_templates.zero_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # fixed buffers (the sin-cos positional embedding) are the architecture, not learned: the
    # init's, so a centroid embedding built from its token centroids is kept
    weights = init[init["config"]["train"].get("sampling_weights", "ema")]
    for name, _ in model.named_buffers():
        if name != "modality_templates" and name in weights:
            state[name] = weights[name].clone()
    config = {k: init["config"][k] for k in ("train", "model", "norms", "ranges", "layout")
              if k in init["config"]}
    config.update(surgeries=[], init_checkpoint=None,
                  meta={"random_init_of": str(init_path), "seed": int(seed)})
    save_checkpoint(Path(out_path), {"model": state, "ema": state, "step": 0,
                                     "losses": torch.zeros(0, dtype=torch.float64),
                                     "config": config})
    return Path(out_path)


def model_conditions(checkpoint_path: str | os.PathLike) -> Conditions:
    """The conditions a trained model takes (:mod:`genbrain.conditions`), from its checkpoint."""
    ckpt = read_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(ckpt["config"]["train"], f"{checkpoint_path}: config")
    return Conditions.of(config, ckpt["config"]["norms"], ckpt["config"].get("ranges"))


def loss_history(checkpoint_path: str | os.PathLike) -> np.ndarray:
    """The mean loss of every optimizer step (1..step) recorded in a checkpoint, float64."""
    ckpt = read_checkpoint(checkpoint_path)
    losses = ckpt.get("losses")
    if losses is None:
        raise GenbrainInputError(f"{checkpoint_path}: the checkpoint holds no loss history "
                                 "(written by an older version)")
    return losses.numpy().astype(np.float64)
