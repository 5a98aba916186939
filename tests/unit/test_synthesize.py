"""Synthesis: labels scaled as in training, per-row seeded noise (shard independence),
deterministic shards that are complete or absent, one-line errors, and the release export."""

import dataclasses
import hashlib
import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from genbrain.errors import GenbrainInputError
from genbrain.export import check_gate, datatype, export_cohort
from genbrain.io import save_tsv
from genbrain.modalities import DEFAULT_REGISTRY, ModalityRegistry
from genbrain.space import standard_space
from genbrain.store import ImageStore, merge_indices, write_shard
from genbrain.synthesize import (
    SamplingConfig,
    condition_labels,
    row_noise,
    sample_table,
    synthesize_shard,
)
from genbrain.training.checkpoints import load_for_sampling
from genbrain.training.loop import train
from tests.unit.training.test_loop import config, make_store, one_line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A nano model (patch 16, 512 voxels) trained for a few steps on T1w (index 0) and VBM
    (index 1) images."""
    root = tmp_path_factory.mktemp("synth")
    t1 = make_store(root / "t1", n=6)
    vbm = make_store(root / "vbm", n=6, modality="VBM", index=1, seed=1)
    return train(config(steps=3), [t1, vbm], root / "run").checkpoint


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


def test_shard_is_a_store_and_is_complete_or_absent(checkpoint, tmp_path, monkeypatch):
    table = covariates(5)
    table["participant_id"] = [f"sub-{i}" for i in range(5)]  # mirrored real subjects
    index = synthesize_shard(checkpoint, table, tmp_path / "shard-000", fast(), REG)
    assert set(index["modality"]) == {"T1w", "VBM"}
    assert index["source_participant_id"].tolist() == table["participant_id"].tolist()
    merged = merge_indices([tmp_path / "shard-000" / "index.tsv"], tmp_path / "index.tsv")
    store = ImageStore(tmp_path / "index.tsv")
    model, norms, cfg = load_for_sampling(checkpoint)
    direct = sample_table(model, norms, cfg, table, fast(), REG)
    for i in range(5):  # store row i holds covariate row i, whatever shard file it is in
        np.testing.assert_allclose(store[i], direct[i], atol=1e-6)
    assert merged["participant_id"].tolist() == [f"syn{i:06d}" for i in range(5)]

    import genbrain.synthesize as synth

    calls = []

    def dies_on_second(vectors, path, dtype):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        np.save(path, vectors)

    monkeypatch.setattr(synth, "write_shard", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        synthesize_shard(checkpoint, table, tmp_path / "shard-001", fast(), REG)
    assert not (tmp_path / "shard-001").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------------------------
# Release export


@pytest.fixture
def full_size_store(tmp_path, checkpoint):
    """Three synthetic full-brain images (T1w z-scores, FA in normalised units)."""
    space = standard_space()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, space.n_voxels)).astype(np.float32)
    root = tmp_path / "synthetic"
    write_shard(x[:2], root / "shard-000" / "T1w.npy", "float32")
    write_shard(x[2:], root / "shard-000" / "FA.npy", "float32")
    save_tsv(pd.DataFrame({"participant_id": ["syn000000", "syn000001", "syn000002"],
                           "synthetic_id": [0, 1, 2], "site": "synthetic",
                           "age": [50.0, 60.0, 70.0], "sex": ["F", "M", "F"],
                           "modality": ["T1w", "T1w", "FA"], "modality_index": [0, 0, 19],
                           "shard": ["T1w.npy", "T1w.npy", "FA.npy"], "row": [0, 1, 0]}),
             root / "shard-000" / "index.tsv")
    merge_indices([root / "shard-000" / "index.tsv"], root / "index.tsv")
    return root / "index.tsv", checkpoint, x


def gate_file(path, passed: bool):
    save_tsv(pd.DataFrame({"n_synthetic": [3], "max_r": [0.41], "threshold": [0.95],
                           "passed": [passed]}), path)
    return path


def test_export_writes_bids_derivatives_with_sidecars(full_size_store, tmp_path):
    index, ckpt, x = full_size_store
    out = tmp_path / "export"
    files = export_cohort(index, gate_file(tmp_path / "gate.tsv", True), out,
                          {"steps": 50, "guidance": 1.2, "seed": 3}, ckpt)
    assert len(files) == 3
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["ImagesExported"] == 3
    t1 = out / "sub-syn000001" / "anat" / \
        "sub-syn000001_space-MNI152NLin6Asym_res-2_desc-synthetic_T1w.nii.gz"
    space = standard_space()
    img = nib.load(t1)
    np.testing.assert_allclose(img.affine, space.affine)
    np.testing.assert_allclose(space.to_vector(np.asanyarray(img.dataobj)), x[1], atol=1e-6)
    fa = out / "sub-syn000002" / "dwi" / \
        "sub-syn000002_space-MNI152NLin6Asym_res-2_desc-synthetic_FA.nii.gz"
    fa_vec = space.to_vector(np.asanyarray(nib.load(fa).dataobj))
    np.testing.assert_allclose(fa_vec, DEFAULT_REGISTRY["FA"].denormalise(x[2]), atol=1e-5)
    side = json.loads(t1.with_name(t1.name.replace(".nii.gz", ".json")).read_text())
    assert side["Conditions"] == {"age": 60.0, "sex": "M", "modality": "T1w"}
    # the conditions the model takes, from its checkpoint (the toy model: age, sex, modality)
    assert set(side["ConditionSpec"]) == {"modality", "age", "sex"}
    assert side["Sampling"]["seed"] == 3 and side["SyntheticId"] == 1
    assert side["Model"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert side["PrivacyGate"] == {"threshold": 0.95, "max_r": 0.41}


def test_export_records_covariates_beyond_the_training_range(full_size_store, tmp_path):
    index, ckpt, _ = full_size_store
    # the toy model trained on ages 40-55 (T1w) and 50-65 (VBM): its checkpoint says so
    assert torch.load(ckpt, weights_only=True)["config"]["ranges"] == \
        {"age": {"min": 40.0, "max": 65.0}}
    # as the cohort_covariates job reads it: the pickle only, no weights
    from genbrain.conditions import Conditions
    from genbrain.io import peek_checkpoint

    assert Conditions.from_record(peek_checkpoint(ckpt)["config"]).training_ranges() == \
        {"age": (40.0, 65.0, "seen in training")}
    out = tmp_path / "export"
    export_cohort(index, gate_file(tmp_path / "gate.tsv", True), out, {}, ckpt)
    sides = {p.name.split("_")[0]: json.loads(p.read_text()) for p in out.rglob("sub-*.json")}
    assert sides["sub-syn000002"]["Extrapolated"] == {  # age 70
        "age": {"value": 70.0, "training_range": [40.0, 65.0],
                "training_range_from": "seen in training"}}
    assert "Extrapolated" not in sides["sub-syn000001"]  # age 60
    assert sides["sub-syn000001"]["ConditionSpec"]["age"]["training_range"] == [40.0, 65.0]


def test_export_refuses_a_failed_gate_and_limits_images(full_size_store, tmp_path):
    index, ckpt, _ = full_size_store
    with pytest.raises(GenbrainInputError) as err:
        export_cohort(index, gate_file(tmp_path / "gate.tsv", False), tmp_path / "out", {}, ckpt)
    assert "privacy gate did not pass" in one_line(err)
    assert not (tmp_path / "out").exists()
    files = export_cohort(index, gate_file(tmp_path / "ok.tsv", True), tmp_path / "out", {},
                          ckpt, max_images=1)
    assert len(files) == 1
    assert len(list((tmp_path / "out").rglob("*.nii.gz"))) == 1
    save_tsv(pd.DataFrame({"max_r": [0.1]}), tmp_path / "bad.tsv")
    with pytest.raises(GenbrainInputError, match="not a privacy-gate table"):
        check_gate(tmp_path / "bad.tsv")


def test_datatypes():
    assert [datatype(m) for m in ("T1w", "FA", "fc03", "task_faces", "VBM")] == \
        ["anat", "dwi", "func", "func", "anat"]
