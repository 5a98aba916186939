"""Synthesis: shards that are stores, deterministic and complete or absent, and the release
export."""

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from genbrain.errors import GenbrainInputError
from genbrain.export import check_gate, datatype, export_cohort
from genbrain.io import save_tsv
from genbrain.modalities import DEFAULT_REGISTRY
from genbrain.sampling import sample_table
from genbrain.space import standard_space
from genbrain.store import ImageStore, merge_indices, write_shard
from genbrain.synthesize import synthesize_shard
from genbrain.training.checkpoints import load_for_sampling
from tests.unit.test_sampling import REG, covariates, fast, nano_checkpoint
from tests.unit.training.test_loop import one_line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The sampler tests' nano model (T1w = index 0, VBM = 1)."""
    return nano_checkpoint(tmp_path_factory.mktemp("synth"))


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
