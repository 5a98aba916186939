"""Synthetic cohorts: a covariate table sampled by a trained DiT into an image store.

A covariate table has one row per synthetic image (:mod:`genbrain.covariates`); columns beyond
those the model is conditioned on (e.g. ``participant_id`` of the real subject whose
covariates a row mirrors, ``replicate``, ``sample``) are carried into the synthetic store's
index untouched. Images are drawn by the one sampler, :func:`genbrain.sampling.sample_table`
(DDIM with classifier-free guidance, initial noise seeded per row and sample), so an image
does not depend on which shard or batch its row falls into: shards are separate jobs that
resume independently.

A synthetic store has the layout of a cohort store (:mod:`genbrain.store`): per shard a folder
``shard-<k>/`` with ``<modality>.npy`` and ``index.tsv``; :func:`genbrain.store.merge_indices`
makes the cohort index. Images are in the model's normalised units (those of the training
store) and in the standard voxel layout whatever the model's (an imported public checkpoint's
samples are converted by the sampler, :mod:`genbrain.sampling`), like every cohort store.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_dir, save_tsv
from genbrain.modalities import DEFAULT_REGISTRY, ModalityRegistry
from genbrain.sampling import SamplingConfig, sample_table, source_images
from genbrain.store import ImageStore, write_shard
from genbrain.training.checkpoints import load_for_sampling


def synthesize_shard(checkpoint: str | os.PathLike, covariates: pd.DataFrame,
                     out_dir: str | os.PathLike, sampling: SamplingConfig,
                     registry: ModalityRegistry = DEFAULT_REGISTRY, dtype: str = "float32",
                     site: str = "synthetic", source: str = "covariates",
                     source_store: str | os.PathLike | None = None) -> pd.DataFrame:
    """Sample the rows of ``covariates`` with the model of ``checkpoint`` and write them as one
    image-store shard folder ``out_dir`` (``<modality>.npy`` + ``index.tsv``). An
    image-conditioned model reads each row's source images from ``source_store`` (an index).

    The folder is built beside ``out_dir`` and renamed into place, so after a kill it is either
    complete or absent. Returns the shard's index (the covariate columns plus ``site``,
    ``modality_index``, ``shard``, ``row``, ``k``, ``seed``, ``guidance``, ``ddim_steps``).
    """
    out_dir = Path(out_dir)
    model, norms, config = load_for_sampling(checkpoint, sampling.weights)
    src = None
    if config.sources:
        if source_store is None:
            raise GenbrainInputError(f"{checkpoint}: the model is image-conditioned on "
                                     f"{', '.join(config.sources)}; give the store to read the "
                                     "source images from")
        src = source_images(ImageStore(source_store), covariates.reset_index(drop=True),
                            list(config.sources), source)
    images = sample_table(model, norms, config, covariates, sampling, registry, source,
                          sources=src)
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
