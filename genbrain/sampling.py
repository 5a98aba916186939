"""The one sampler: images from a trained DiT for the rows of a covariate table.

A covariate table has one row per image to draw: ``synthetic_id`` (unique), ``age`` (years),
``sex`` (M/F), ``modality`` (a registry name), and, for fine-tuned models, ``diagnosis`` (one
of the model's ``diagnosis_levels``) and the model's score column
(:mod:`genbrain.covariates`).

Sampling is DDIM (eta 0) over evenly respaced steps with classifier-free guidance on epsilon,
averaging ``k`` independent samples per row when asked (the paper: 50 steps, scale 1.2, k = 5
for image tasks, 1 for augmentation). The initial noise of row ``synthetic_id = i`` and sample
``j`` comes from a generator seeded with (seed, i, j), so an image does not depend on which
shard or batch its row falls into.

Synthesis (:func:`genbrain.synthesize.synthesize_shard`), the pretraining sample panel and the
paired-sample checks of pretrained and fine-tuned models all draw through
:func:`sample_table`. Images are in the model's normalised units (those of the training
store) and in the standard voxel layout whatever the model's (:mod:`genbrain.layout`): a model
of another layout (an imported public checkpoint: ``model.voxel_layout``) reads its source
images converted to its layout and its samples are converted back (one log line each), so
synthetic stores, the audit, the export and every statistic see standard-layout vectors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from genbrain.conditions import Conditions, encode_labels
from genbrain.covariates import check_covariates
from genbrain.errors import GenbrainInputError
from genbrain.layout import standard_converter, store_converter
from genbrain.modalities import DEFAULT_REGISTRY, ModalityRegistry
from genbrain.model.diffusion import DDIMSampler, GaussianDiffusion
from genbrain.model.dit import DiT
from genbrain.precision import use_bf16
from genbrain.store import ImageStore
from genbrain.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """How images are drawn: ``steps`` DDIM steps (IDDPM even spacing), CFG ``guidance`` scale
    on epsilon (None = conditional model only), ``k`` samples averaged per row, ``batch_size``
    label rows per forward pass (2x that with guidance), ``seed``, ``weights`` ("ema",
    "model", or None = the checkpoint's ``sampling_weights``), ``clip_x0`` (clamp of the
    predicted clean image at each step, None = none), ``precision`` of the model calls
    (``fp32`` or ``bf16``; see :class:`DDIMSampler`), ``compile``: the DiT blocks through
    ``torch.compile`` (None = on CUDA only; see :meth:`genbrain.model.dit.DiT.compile_blocks`)."""

    steps: int = 50
    guidance: float | None = 1.2
    k: int = 1
    batch_size: int = 8
    seed: int = 0
    weights: str | None = None
    clip_x0: float | None = None
    precision: str = "fp32"
    compile: bool | None = None

    def __post_init__(self) -> None:
        for key in ("steps", "k", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise GenbrainInputError(f"sampling config: '{key}' is {value!r}; expected an "
                                         "integer >= 1")
        if self.guidance is not None and not self.guidance >= 0:
            raise GenbrainInputError(f"sampling config: 'guidance' is {self.guidance!r}; "
                                     "expected a number >= 0 or null")
        if not (self.compile is None or isinstance(self.compile, bool)):
            raise GenbrainInputError(f"sampling config: 'compile' is {self.compile!r}; "
                                     "expected true, false or null")


def condition_labels(table: pd.DataFrame, model: DiT, norms: Mapping[str, Mapping[str, float]],
                     config: TrainConfig, registry: ModalityRegistry = DEFAULT_REGISTRY,
                     source: str = "covariates") -> dict[str, torch.Tensor]:
    """DiT labels (each (N,)) for the rows of a covariate table, encoded as in training
    (:func:`genbrain.conditions.encode_labels` with the run's conditions and scalings).

    Modality = registry index, which must exist in the model's table; ``diagnosis`` is
    required when the model has a disease head, the score column when it has a score head."""
    check_covariates(table, source)
    conditions = Conditions.of(config, norms)
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
    for kind, head, column in (("disease", model.disease_embedder, "diagnosis"),
                               ("score", model.score_embedder, conditions.score_column)):
        if head is not None and column not in table.columns:
            raise GenbrainInputError(f"{source}: the model has a {kind} head; the table needs "
                                     f"a '{column}' column")
    return {k: torch.from_numpy(np.array(v)) for k, v in encode_labels(
        table.reset_index(drop=True), conditions, np.asarray(index, np.int64), source).items()}


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
                 device: torch.device | str | None = None,
                 sources: np.ndarray | None = None) -> np.ndarray:
    """Images for every row of ``table`` -> (N, V) float32 in the standard layout (V of the
    model when it records none), each the mean of ``sampling.k`` samples; progress (rows,
    images/s, ETA) is logged after every batch. An image-conditioned model (``config.sources``)
    needs ``sources`` (N, K, V): each row's source images, in the order of ``config.sources``
    (:func:`source_images` reads them from a store; a standard-layout store's are converted to
    a model of another layout)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    labels = condition_labels(table, model, norms, config, registry, source)
    want = len(config.sources or [])
    got = 0 if sources is None else sources.shape[1]
    if want != got or (sources is not None and sources.shape[0] != len(table)):
        raise GenbrainInputError(
            f"{source}: the model takes {want} source images per row "
            f"({', '.join(config.sources or []) or 'none'}) but "
            f"{'none were' if sources is None else f'an array of shape {sources.shape} was'} "
            "given")
    sampler = DDIMSampler(GaussianDiffusion.linear(prediction=config.prediction),
                          steps=sampling.steps,
                          guidance_scale=sampling.guidance, clip_x0=sampling.clip_x0,
                          precision="bf16" if use_bf16(sampling.precision, device, "sampling")
                          else "fp32")
    model = model.to(device).eval()
    model.compile_blocks(sampling.compile)  # compiles at the first batch (and a smaller last)
    ids = table["synthetic_id"].to_numpy(np.int64)
    n, V, C = len(table), model.n_voxels, model.out_channels
    if sources is not None:
        to_model = store_converter(model.voxel_layout, V, sources.shape[-1], "the model",
                                   f"{source}: source images")
        sources = sources if to_model is None else to_model(sources)  # (N, K, V)
    to_standard = standard_converter(model.voxel_layout, f"{source}: the model")
    out = np.empty((n, V if to_standard is None else to_standard.dst.n_voxels), np.float32)
    t0 = time.perf_counter()
    for start in range(0, n, sampling.batch_size):
        rows = slice(start, min(start + sampling.batch_size, n))
        noise = row_noise(sampling.seed, ids[rows], sampling.k, C, V)
        x_cond = None if sources is None else \
            torch.from_numpy(np.asarray(sources[rows], np.float32)).to(device)  # (b, K, V)
        x = sampler.sample(model, {k: v[rows].to(device) for k, v in labels.items()}, V,
                           torch.Generator(), n_channels=C, k=sampling.k, noise=noise,
                           x_cond=x_cond)
        x = x[:, 0].float().cpu().numpy()  # (b, V) in the model's layout
        out[rows] = x if to_standard is None else to_standard(x)
        done, spent = rows.stop, time.perf_counter() - t0
        log.info("%s: %d/%d images  %.2f images/s  ETA %ds", source, done, n, done / spent,
                 round(spent / done * (n - done)))
    return out


def source_images(store: ImageStore, table: pd.DataFrame, sources: list[str],
                  source: str = "covariates") -> np.ndarray:
    """(N, K, V) float32: for every row of ``table`` (``participant_id``, and ``site`` when the
    store has several), the store's images of the K ``sources`` modalities of that
    participant; a missing one is a one-line error naming the row and participant."""
    t = store.table
    by_key = {(str(p), str(m)): i for i, (p, m) in enumerate(zip(t["participant_id"],
                                                                  t["modality"]))}
    if "participant_id" not in table.columns:
        raise GenbrainInputError(f"{source}: the model is image-conditioned on "
                                 f"{', '.join(sources)}; the table needs a 'participant_id' "
                                 "column naming whose source images to use")
    rows = np.zeros((len(table), len(sources)), np.int64)
    for i, pid in enumerate(table["participant_id"].astype(str)):
        for j, m in enumerate(sources):
            if (pid, m) not in by_key:
                raise GenbrainInputError(f"{source}: row {i + 1}: {store.index_path} has no "
                                         f"{m} image of {pid}")
            rows[i, j] = by_key[(pid, m)]
    out = np.empty((len(table), len(sources), store.n_voxels), np.float32)
    for j in range(len(sources)):
        out[:, j] = store.batch(rows[:, j])
    return out


__all__ = ["SamplingConfig", "condition_labels", "row_noise", "sample_table", "source_images"]
