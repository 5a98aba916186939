"""The pretraining stage (genbrain.pretrain): training split only, resume through the work
folder, the loss table, and the synthetic-vs-real panel on full-size images."""

import numpy as np
import pandas as pd
import pytest
import torch

from genbrain.errors import GenbrainInputError
from genbrain.io import save_tsv
from genbrain.pretrain import (
    launch_command,
    loss_table,
    pretrain,
    run_pretraining,
    sample_panel,
    take_pretrained,
    training_store,
)
from genbrain.sampling import SamplingConfig
from genbrain.space import standard_space
from genbrain.store import ImageStore, merge_indices, write_shard
from genbrain.training.checkpoints import loss_history

SETTINGS = {"preset": "nano/256", "steps": 2, "global_batch": 2, "lr": 1e-3,
            "checkpoint_every": 1, "log_every": 1, "sampling_weights": "model",
            "micro_batch": None}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Full-size T1w and VBM images of 6 participants; sub-4 and sub-5 are held out."""
    root = tmp_path_factory.mktemp("pretrain")
    v = standard_space().n_voxels
    rng = np.random.default_rng(0)
    people = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(6)], "site": "a",
                           "age": [50.0, 55, 60, 65, 62, 70], "sex": ["F", "M"] * 3})
    parts = []
    for m, idx in (("T1w", 27), ("VBM", 28)):
        write_shard(rng.standard_normal((6, v)).astype(np.float32), root / "s" / f"{m}.npy",
                    "float16")
        parts.append(people.assign(modality=m, modality_index=idx, shard=f"{m}.npy",
                                   row=np.arange(6)))
    save_tsv(pd.concat(parts), root / "s" / "chunk.tsv")
    merge_indices([root / "s" / "chunk.tsv"], root / "index.tsv")
    save_tsv(people.assign(split=["train"] * 4 + ["holdout"] * 2), root / "split.tsv")
    return root


def test_training_store_holds_the_training_split_only(cohort):
    store = training_store(cohort / "index.tsv", cohort / "split.tsv")
    assert sorted(store.table["participant_id"].unique()) == ["sub-0", "sub-1", "sub-2", "sub-3"]
    assert len(training_store(cohort / "index.tsv", cohort / "split.tsv", ["VBM"])) == 4
    split = pd.DataFrame({"participant_id": ["sub-9"], "split": ["train"]})
    with pytest.raises(GenbrainInputError, match="no images of training-split participants"):
        training_store(cohort / "index.tsv", split)


def test_pretrain_resumes_from_its_work_folder(cohort, tmp_path):
    out = tmp_path / "checkpoint.pt"
    pretrain(cohort / "index.tsv", cohort / "split.tsv", SETTINGS, tmp_path / "work", out,
             seed=5)
    first = loss_history(out)
    assert len(first) == 2 and np.isfinite(first).all()
    assert torch.load(out, weights_only=False)["config"]["train"]["seed"] == 5  # workflow seed
    # a longer run (e.g. after a timeout) continues from step 2 instead of starting again
    pretrain(cohort / "index.tsv", cohort / "split.tsv", {**SETTINGS, "steps": 3},
             tmp_path / "work", out, seed=5)
    again = loss_history(out)
    assert len(again) == 3
    np.testing.assert_array_equal(again[:2], first)
    table = loss_table(out, window=3)
    assert list(table.columns) == ["step", "loss", "smoothed"]
    assert table["step"].tolist() == [1, 2, 3]
    assert table["smoothed"].tolist() == pytest.approx(
        [again[:2].mean(), again.mean(), again[1:].mean()])  # centred, ends truncated


def test_centroid3d_pretrains_with_the_standard_space_token_centroids(cohort, tmp_path):
    # `pos_embed: centroid3d` from the config runs end to end: the job computes each token's
    # voxel centroid on the brain mask, the checkpoint keeps them, sampling rebuilds the model.
    from genbrain.model.dit import token_centroids
    from genbrain.training.checkpoints import load_for_sampling

    out = tmp_path / "checkpoint.pt"
    pretrain(cohort / "index.tsv", cohort / "split.tsv",
             {**SETTINGS, "steps": 1, "pos_embed": "centroid3d"}, tmp_path / "work", out,
             seed=5)
    spec = torch.load(out, weights_only=False)["config"]["model"]
    assert spec["pos_embed"] == "centroid3d"
    ijk = np.argwhere(standard_space().mask)  # C order: the voxel-vector order
    expected = token_centroids(ijk, 256)
    assert np.asarray(spec["token_centroids"]).shape == (-(-standard_space().n_voxels // 256), 3)
    np.testing.assert_allclose(spec["token_centroids"], expected)
    assert expected[:, 0].min() < 20 and expected[:, 0].max() > 70  # spans the brain in x
    model, _, _ = load_for_sampling(out, "model")
    assert model.pos_embed_kind == "centroid3d"


def test_sample_panel_pairs_each_modality_with_the_nearest_holdout(cohort, tmp_path):
    ckpt = pretrain(cohort / "index.tsv", cohort / "split.tsv", SETTINGS, tmp_path / "w",
                    tmp_path / "c.pt", seed=1)
    png = tmp_path / "samples.png"
    pairs = sample_panel(ckpt, cohort / "index.tsv", cohort / "split.tsv", 66, "M",
                         SamplingConfig(steps=2, guidance=1.2, batch_size=2, seed=0), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pairs["modality"].tolist() == ["T1w", "VBM"]
    # hold-out: sub-4 (F, 62) and sub-5 (M, 70): the male one is chosen for a male condition
    assert pairs["real"].tolist() == ["sub-5", "sub-5"]
    # r with the hold-out mean image, checked against numpy on the images themselves
    store = ImageStore(cohort / "index.tsv", modalities=["VBM"], participants=["sub-4", "sub-5"])
    x = store.batch([0, 1]).astype(np.float64)
    real = x[store.table.index[store.table["participant_id"] == "sub-5"][0]]
    assert pairs["r_real"].iloc[1] == pytest.approx(np.corrcoef(real, x.mean(0))[0, 1], abs=1e-9)
    assert pairs["r_synthetic"].between(-1, 1).all()


def test_two_processes_under_torchrun_match_one(cohort, tmp_path, monkeypatch):
    """gpu=2 starts torchrun (gloo on CPU here); the global batch is split across the ranks,
    so the weights equal those of one process to float rounding."""
    one = pretrain(cohort / "index.tsv", cohort / "split.tsv", SETTINGS, tmp_path / "w1",
                   tmp_path / "one.pt", seed=2, threads=1)
    monkeypatch.chdir(tmp_path)  # as in a workflow run elsewhere: the package is not on cwd
    two = run_pretraining(cohort / "index.tsv", cohort / "split.tsv", SETTINGS, tmp_path / "w2",
                          tmp_path / "two.pt", seed=2, threads=2, gpus=2)
    a, b = (torch.load(p, weights_only=False) for p in (one, two))
    assert a["step"] == b["step"] == 2
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-5)
    np.testing.assert_allclose(b["losses"].numpy(), a["losses"].numpy(), rtol=1e-5)


def test_launch_commands():
    one = launch_command(["--seed", "1"], 4, python="py")
    assert one == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                   "-m", "genbrain.pretrain", "--seed", "1"]
    multi = launch_command(["--seed", "1"], 4, 2, rendezvous="gpu01:29500", job_id="77",
                           python="py")
    assert multi[:3] == ["srun", "--nodes=2", "--ntasks-per-node=1"]
    assert "--nnodes=2" in multi and "--rdzv-endpoint=gpu01:29500" in multi
    assert "--rdzv-id=77" in multi and multi[-4:] == ["-m", "genbrain.pretrain", "--seed", "1"]
    with pytest.raises(GenbrainInputError, match="rendezvous"):
        launch_command([], 4, 2)
    with pytest.raises(GenbrainInputError, match="do not divide"):
        run_pretraining("i", "s", {}, "w", "c", seed=0, gpus=3, nodes=2)


def test_a_given_checkpoint_is_copied_unchanged_and_its_missing_losses_are_drawn_as_such(
        tmp_path, monkeypatch, caplog):
    """pretrain.checkpoint: an imported public checkpoint (no loss history) is loaded, logged
    with its layout and copied byte for byte; its loss table is empty and the loss figure says
    so. A file that is not a genbrain checkpoint is a one-line error and writes nothing."""
    from genbrain.figures import loss_curve
    from genbrain.layout import PUBLIC
    from genbrain.model.public import import_public_checkpoint
    from tests.public_checkpoint import AGE, write_full_size

    monkeypatch.delenv("FSLDIR", raising=False)
    given = import_public_checkpoint(write_full_size(tmp_path / "0000200.pt"), PUBLIC,
                                     tmp_path / "genbrain.pt", age_norm=AGE)
    caplog.set_level("INFO", logger="genbrain.pretrain")
    out = take_pretrained(given, tmp_path / "results" / "checkpoint.pt")
    assert out.read_bytes() == given.read_bytes()
    assert f"layout {PUBLIC}; taken as the pretrained model, nothing is trained" in caplog.text
    table = loss_table(out)
    assert len(table) == 0 and list(table.columns) == ["step", "loss", "smoothed"]
    loss_curve(table, tmp_path / "loss.png", title="pretraining: 0 steps")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(GenbrainInputError, match="0000200.pt: not a training checkpoint"):
        take_pretrained(tmp_path / "0000200.pt", tmp_path / "junk.pt")
    assert not (tmp_path / "junk.pt").exists()
