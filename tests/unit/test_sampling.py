"""The sampler: labels scaled as in training, per-row seeded noise (shard independence), k
samples averaged, compiled blocks matching eager, one-line errors."""

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genbrain.errors import GenbrainInputError
from genbrain.modalities import DEFAULT_REGISTRY, ModalityRegistry
from genbrain.sampling import SamplingConfig, condition_labels, row_noise, sample_table
from genbrain.training.checkpoints import load_for_sampling
from genbrain.training.loop import train
from tests.unit.training.test_loop import config, make_store, one_line


def nano_checkpoint(root: Path) -> Path:
    """A nano model (patch 16, 512 voxels) trained for a few steps on T1w (index 0) and VBM
    (index 1) images, under ``root``."""
    t1 = make_store(root / "t1", n=6)
    vbm = make_store(root / "vbm", n=6, modality="VBM", index=1, seed=1)
    return train(config(steps=3), [t1, vbm], root / "run").checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return nano_checkpoint(tmp_path_factory.mktemp("synth"))


# the toy model's modality table: T1w = 0, VBM = 1
REG = ModalityRegistry([dataclasses.replace(DEFAULT_REGISTRY["T1w"], index=0),
                        dataclasses.replace(DEFAULT_REGISTRY["VBM"], index=1)])


def covariates(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"synthetic_id": np.arange(start, start + n),
                         "age": np.linspace(45, 75, n), "sex": (["F", "M"] * n)[:n],
                         "modality": (["T1w", "VBM", "VBM"] * n)[:n]})


def fast(**changes) -> SamplingConfig:
    return SamplingConfig(**{"steps": 5, "guidance": 1.2, "batch_size": 2, "seed": 3,
                             **changes})


def test_labels_are_scaled_as_in_training(checkpoint):
    model, norms, cfg = load_for_sampling(checkpoint)
    table = covariates(4)
    labels = condition_labels(table, model, norms, cfg, REG)
    expected = (table["age"] - norms["age"]["mean"]) / norms["age"]["std"]
    np.testing.assert_allclose(labels["age"].numpy(), expected.to_numpy(), rtol=1e-6)
    assert labels["sex"].tolist() == [1, 0, 1, 0]  # F = 1, M = 0 as in training
    assert labels["modality"].tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("change, message", [
    ({"sex": "X"}, "row 1: sex 'X' is not one of M, F"),
    ({"age": "old"}, "row 1: age 'old' is not a number"),
    ({"modality": "FLAIR"}, "unknown modality 'FLAIR'"),
    ({"synthetic_id": -1}, "row 1: synthetic_id '-1' is not an integer >= 0"),
])
def test_bad_covariates_give_one_line_errors(checkpoint, change, message):
    model, norms, cfg = load_for_sampling(checkpoint)
    table = covariates(3).astype(object)
    for k, v in change.items():
        table.loc[0, k] = v
    with pytest.raises(GenbrainInputError) as err:
        condition_labels(table, model, norms, cfg, REG, source="cov.tsv")
    assert message in one_line(err)
    assert one_line(err).startswith("cov.tsv: ")


def test_missing_diagnosis_for_a_disease_head_is_named(checkpoint):
    model, norms, cfg = load_for_sampling(checkpoint)
    model.add_disease_head(2)
    with pytest.raises(GenbrainInputError, match="needs a 'diagnosis' column"):
        condition_labels(covariates(2), model, norms, cfg, REG)


def test_row_noise_depends_only_on_seed_id_and_sample():
    a = row_noise(7, np.array([4, 9]), 2, 1, 32)
    b = row_noise(7, np.array([9]), 2, 1, 32)
    assert torch.equal(a[2:], b)  # row 9's samples do not depend on row 4 being there
    assert not torch.equal(a[2], a[3])  # the k samples of a row differ
    assert not torch.equal(a, row_noise(8, np.array([4, 9]), 2, 1, 32))


def test_images_do_not_depend_on_batching_or_sharding(checkpoint):
    model, norms, cfg = load_for_sampling(checkpoint)
    table = covariates(5)
    whole = sample_table(model, norms, cfg, table, fast(batch_size=5), REG)
    again = sample_table(model, norms, cfg, table, fast(batch_size=5), REG)
    assert np.array_equal(whole, again)  # deterministic for a seed
    parts = np.concatenate([
        sample_table(model, norms, cfg, table.iloc[:2], fast(batch_size=1), REG),
        sample_table(model, norms, cfg, table.iloc[2:], fast(batch_size=2), REG)])
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    other = sample_table(model, norms, cfg, table, fast(seed=4), REG)
    assert np.abs(other - whole).max() > 0.1
    assert whole.shape == (5, 512) and np.isfinite(whole).all()


def test_compiled_sampling_matches_eager(checkpoint, caplog):
    model, norms, cfg = load_for_sampling(checkpoint)
    table = covariates(2)
    eager = sample_table(model, norms, cfg, table, fast(compile=False), REG)
    assert not model.blocks_compiled
    with caplog.at_level("WARNING"):
        compiled = sample_table(model, norms, cfg, table, fast(compile=True), REG)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert model.blocks_compiled or (len(warned) == 1 and "running them eager" in warned[0])
    # to 1e-5 of the images' scale (DDIM divides epsilon's rounding by sqrt(abar): 156x at t = 999)
    scale = np.abs(eager).max()
    assert scale > 0.5
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-5 * scale)
    with pytest.raises(GenbrainInputError, match="'compile' is 1; expected true, false or null"):
        fast(compile=1)


def test_k_samples_are_averaged(checkpoint):
    model, norms, cfg = load_for_sampling(checkpoint)
    table = covariates(2)
    avg = sample_table(model, norms, cfg, table, fast(k=3), REG)
    # the k samples of row i are the rows (i, j) of an explicit repeat with the same noise
    noise = row_noise(3, table["synthetic_id"].to_numpy(), 3, 1, 512)
    from genbrain.model.diffusion import DDIMSampler, GaussianDiffusion

    sampler = DDIMSampler(GaussianDiffusion.linear(), steps=5, guidance_scale=1.2)
    labels = condition_labels(table, model, norms, cfg, REG)
    each = sampler.sample(model, {k: v.repeat_interleave(3) for k, v in labels.items()}, 512,
                          torch.Generator(), noise=noise)[:, 0].numpy()
    np.testing.assert_allclose(avg, each.reshape(2, 3, 512).mean(1), atol=1e-5)
