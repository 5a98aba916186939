"""Synthetic images from a trained DiT, conditioned on a covariate table.

A covariate table has one row per synthetic image: ``synthetic_id`` (unique), ``age`` (years),
``sex`` (M/F), ``modality`` (a registry name), and, for fine-tuned models, ``diagnosis`` (one
of the model's ``diagnosis_levels``) and the model's score column. Any other columns (e.g.
``participant_id`` of the real subject whose covariates a row mirrors, ``replicate``,
``sample``) are carried into the synthetic store's index untouched.

Sampling is DDIM (eta 0) over evenly respaced steps with classifier-free guidance on epsilon,
averaging ``k`` independent samples per row when asked (the paper: 50 steps, scale 1.2, k = 5
for image tasks, 1 for augmentation). The initial noise of row ``synthetic_id = i`` and sample
``j`` comes from a generator seeded with (seed, i, j), so an image does not depend on which
shard or batch its row falls into: shards are separate jobs that resume independently.

A synthetic store has the layout of a cohort store (:mod:`genbrain.store`): per shard a folder
``shard-<k>/`` with ``<modality>.npy`` and ``index.tsv``; :func:`genbrain.store.merge_indices`
makes the cohort index. Images are in the model's normalised units (those of the training
store).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genbrain.covariates import (SEXES, check_covariates, fail_at_first,  # noqa: F401
                                 read_covariates)
from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_dir, save_tsv
from genbrain.modalities import DEFAULT_REGISTRY, ModalityRegistry
from genbrain.model.diffusion import DDIMSampler, GaussianDiffusion
from genbrain.model.dit import DiT
from genbrain.store import write_shard
from genbrain.train import TrainConfig, load_for_sampling

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """How images are drawn: ``steps`` DDIM steps (IDDPM even spacing), CFG ``guidance`` scale
    on epsilon (None = conditional model only), ``k`` samples averaged per row, ``batch_size``
    label rows per forward pass (2x that with guidance), ``seed``, ``weights`` ("ema",
    "model", or None = the checkpoint's ``sampling_weights``), ``clip_x0`` (clamp of the
    predicted clean image at each step, None = none), ``precision`` of the model calls
    (``fp32`` or ``bf16``; see :class:`DDIMSampler`)."""

    steps: int = 50
    guidance: float | None = 1.2
    k: int = 1
    batch_size: int = 8
    seed: int = 0
    weights: str | None = None
    clip_x0: float | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for key in ("steps", "k", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise GenbrainInputError(f"sampling config: '{key}' is {value!r}; expected an "
                                         "integer >= 1")
        if self.guidance is not None and not self.guidance >= 0:
            raise GenbrainInputError(f"sampling config: 'guidance' is {self.guidance!r}; "
                                     "expected a number >= 0 or null")


def condition_labels(table: pd.DataFrame, model: DiT, norms: Mapping[str, Mapping[str, float]],
                     config: TrainConfig, registry: ModalityRegistry = DEFAULT_REGISTRY,
                     source: str = "covariates") -> dict[str, torch.Tensor]:
    """DiT labels (each (N,)) for the rows of a covariate table, scaled as in training.

    Age (and score) are z-scored with the checkpoint's scalings; sex M = 0, F = 1; modality =
    registry index, which must exist in the model's table; ``diagnosis`` is required when the
    model has a disease head and must be one of the run's ``diagnosis_levels``."""
    check_covariates(table, source)
    age = (table["age"].to_numpy(np.float64) - norms["age"]["mean"]) / norms["age"]["std"]
    labels = {"age": torch.from_numpy(age.astype(np.float32)),
              "sex": torch.tensor(table["sex"].map(SEXES.index).to_numpy(np.int64))}
    n_mod = model.modality_embedder.num_embeddings - 1
    index = []
    for i, name in enumerate(table["modality"]):
        try:
            m = registry[str(name)].index
        except GenbrainInputError as err:
            raise GenbrainInputError(f"{source}: row {i + 1}: {err}") from None
        if m >= n_mod:
            raise GenbrainInputError(f"{source}: row {i + 1}: modality '{name}' has index {m} "
                                     f"but the model's modality table holds {n_mod} "
                                     f"(indices 0..{n_mod - 1})")
        index.append(m)
    labels["modality"] = torch.tensor(index, dtype=torch.int64)
    if model.disease_embedder is not None:
        levels = list(config.diagnosis_levels or [])
        if "diagnosis" not in table.columns:
            raise GenbrainInputError(f"{source}: the model has a disease head ({levels}); "
                                     "the table needs a 'diagnosis' column")
        fail_at_first(~table["diagnosis"].isin(levels), source,
                      lambda i: f"diagnosis '{table['diagnosis'].iloc[i]}' is not one of "
                                f"{', '.join(levels)}")
        labels["disease"] = torch.tensor(table["diagnosis"].map(levels.index)
                                         .to_numpy(np.int64))
    if model.score_embedder is not None:
        col = config.score_column
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(np.float64) \
            if col in table.columns else None
        if values is None or not np.isfinite(values).all():
            raise GenbrainInputError(f"{source}: the model has a score head; the table needs a "
                                     f"numeric '{col}' column")
        z = (values - norms["score"]["mean"]) / norms["score"]["std"]
        labels["score"] = torch.from_numpy(z.astype(np.float32))
    return labels


def row_noise(seed: int, synthetic_ids: np.ndarray, k: int, n_channels: int,
              n_voxels: int) -> torch.Tensor:
    """Initial noise (N k, C, V): sample j of row i from a generator seeded by (seed, id, j)."""
    out = torch.empty(len(synthetic_ids) * k, n_channels, n_voxels)
    for r, sid in enumerate(synthetic_ids):
        for j in range(k):
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([seed, int(sid), j]).generate_state(1)[0]))
            out[r * k + j] = torch.randn(n_channels, n_voxels, generator=g)
    return out


def sample_table(model: DiT, norms: Mapping[str, Mapping[str, float]], config: TrainConfig,
                 table: pd.DataFrame, sampling: SamplingConfig,
                 registry: ModalityRegistry = DEFAULT_REGISTRY, source: str = "covariates",
                 device: torch.device | str | None = None) -> np.ndarray:
    """Images for every row of ``table`` -> (N, V) float32, each the mean of ``sampling.k``
    samples; progress (rows, images/s, ETA) is logged after every batch."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    labels = condition_labels(table, model, norms, config, registry, source)
    sampler = DDIMSampler(GaussianDiffusion.linear(prediction=config.prediction),
                          steps=sampling.steps,
                          guidance_scale=sampling.guidance, clip_x0=sampling.clip_x0,
                          precision=sampling.precision)
    model = model.to(device).eval()
    ids = table["synthetic_id"].to_numpy(np.int64)
    n, V, C = len(table), model.n_voxels, model.out_channels
    out = np.empty((n, V), np.float32)
    t0 = time.perf_counter()
    for start in range(0, n, sampling.batch_size):
        rows = slice(start, min(start + sampling.batch_size, n))
        noise = row_noise(sampling.seed, ids[rows], sampling.k, C, V)
        x = sampler.sample(model, {k: v[rows].to(device) for k, v in labels.items()}, V,
                           torch.Generator(), n_channels=C, k=sampling.k, noise=noise)
        out[rows] = x[:, 0].float().cpu().numpy()  # (b, V)
        done, spent = rows.stop, time.perf_counter() - t0
        log.info("%s: %d/%d images  %.2f images/s  ETA %ds", source, done, n, done / spent,
                 round(spent / done * (n - done)))
    return out


def synthesize_shard(checkpoint: str | os.PathLike, covariates: pd.DataFrame,
                     out_dir: str | os.PathLike, sampling: SamplingConfig,
                     registry: ModalityRegistry = DEFAULT_REGISTRY, dtype: str = "float32",
                     site: str = "synthetic", source: str = "covariates") -> pd.DataFrame:
    """Sample the rows of ``covariates`` with the model of ``checkpoint`` and write them as one
    image-store shard folder ``out_dir`` (``<modality>.npy`` + ``index.tsv``).

    The folder is built beside ``out_dir`` and renamed into place, so after a kill it is either
    complete or absent. Returns the shard's index (the covariate columns plus ``site``,
    ``modality_index``, ``shard``, ``row``, ``k``, ``seed``, ``guidance``, ``ddim_steps``).
    """
    out_dir = Path(out_dir)
    model, norms, config = load_for_sampling(checkpoint, sampling.weights)
    images = sample_table(model, norms, config, covariates, sampling, registry, source)
    index = covariates.reset_index(drop=True).copy()
    # participant_id names the synthetic image; a mirrored real subject keeps its own column
    if "participant_id" in index.columns:
        index = index.rename(columns={"participant_id": "source_participant_id"})
    index.insert(0, "participant_id", [f"syn{int(i):06d}" for i in index["synthetic_id"]])
    if "site" not in index.columns:
        index["site"] = site
    index["modality_index"] = [registry[str(m)].index for m in index["modality"]]
    index["shard"], index["row"] = "", 0
    index["k"], index["seed"] = sampling.k, sampling.seed
    index["guidance"] = "none" if sampling.guidance is None else sampling.guidance
    index["ddim_steps"] = sampling.steps
    with atomic_dir(out_dir) as tmp:
        for modality, rows in index.groupby("modality", sort=True).groups.items():
            rows = np.asarray(rows)
            name = f"{modality}.npy"
            write_shard(images[rows], tmp / name, dtype)
            index.loc[rows, "shard"] = name
            index.loc[rows, "row"] = np.arange(len(rows))
        save_tsv(index, tmp / "index.tsv")
    return index


def describe(sampling: SamplingConfig, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What a release sidecar records about how images were drawn."""
    return {"model": str(checkpoint), "sampler": "DDIM", "eta": 0.0, "ddim_steps": sampling.steps,
            "guidance_scale": sampling.guidance, "samples_averaged": sampling.k,
            "seed": sampling.seed, "weights": sampling.weights or "checkpoint default",
            "clip_x0": sampling.clip_x0, "precision": sampling.precision}
