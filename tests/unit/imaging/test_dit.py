"""The DiT methods of a synthesis task: the from-scratch control's random start
(genbrain.training.checkpoints.random_init_checkpoint), the fine-tuning job run from it, and the
predictions (genbrain.imaging.plan.dit_predictions): k DDIM samples per test participant from
its source image, averaged, then mapped to [0, 1] as the pairs are. Toy models and stores (V =
512) from the fine-tuning tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from genbrain.errors import GenbrainInputError
from genbrain.imaging import plan as ip
from genbrain.imaging.metrics import normalise_01
from genbrain.io import read_tsv, save_tsv
from genbrain.sampling import SamplingConfig, sample_table, source_images
from genbrain.store import ImageStore, write_shard
from genbrain.training.checkpoints import (
    load_for_sampling,
    random_init_checkpoint,
    read_checkpoint,
)
from genbrain.training.loop import train
from tests.unit.test_finetune import REG, effect_store, tune
from tests.unit.training.test_loop import config, make_store

SAMPLING = {"steps": 3, "guidance": 1.2, "batch_size": 4, "seed": 11, "weights": None}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A nano model pretrained for a few steps on T1w (index 0) and FLAIR (index 1), with
    modality templates (as tests/unit/test_finetune.py's)."""
    root = tmp_path_factory.mktemp("pre")
    t1 = make_store(root / "t1", n=8)
    flair = make_store(root / "flair", n=8, modality="FLAIR", index=1, seed=1)
    return train(config(steps=6, modality_templates=True, prediction="v"), [t1, flair],
                 root / "run").checkpoint


def _task(n_test: int, **changes) -> ip.ImagingTask:
    base = {"task": "syn", "kind": "synthesis", "cohort": "c", "modality": "T1w",
            "n_test": n_test, "n_train": 4, "methods": ("genbrain", "scratch"), "corrupt": {},
            "unet": {}, "metrics": ("psnr",), "n_examples": 1, "n_boot": 10, "seed": 3,
            "sources": ("FLAIR",), "k": 2}
    return ip.ImagingTask(**{**base, **changes})


def _images(store: ImageStore, path, n_test: int):
    t = store.table.drop_duplicates("participant_id").reset_index(drop=True)
    images = pd.DataFrame({"participant_id": t["participant_id"], "set": "train",
                           "row": 0, "site": t["site"], "age": t["age"], "sex": t["sex"]})
    images.loc[: n_test - 1, "set"] = "test"
    images["row"] = images.groupby("set").cumcount()
    save_tsv(images, path)
    return images


def test_the_random_start_has_the_architecture_and_records_but_fresh_weights(tmp_path,
                                                                                pretrained):
    a = random_init_checkpoint(pretrained, tmp_path / "a.pt", seed=4)
    again = random_init_checkpoint(pretrained, tmp_path / "again.pt", seed=4)
    other = random_init_checkpoint(pretrained, tmp_path / "b.pt", seed=5)
    pre, ra = read_checkpoint(pretrained), read_checkpoint(a)
    assert ra["step"] == 0 and len(ra["losses"]) == 0
    for key in ("model", "norms", "ranges", "train"):
        assert ra["config"][key] == pre["config"][key], key
    assert ra["config"]["meta"]["random_init_of"] == str(pretrained)
    weights = pre["config"]["train"]["sampling_weights"]
    trained, fresh = pre[weights], ra["model"]
    assert set(fresh) == set(trained)
    # the blocks' weights are fresh; the fixed positional embedding is the architecture's
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], trained["blocks.0.attn.qkv.weight"])
    assert torch.equal(fresh["pos_embed"], trained["pos_embed"])
    # no template: the fine-tune sets its modality's from its own training images
    assert trained["modality_templates"].abs().max() > 0
    assert fresh["modality_templates"].abs().max() == 0
    # seeded: the same seed gives the same weights, another seed others
    assert all(torch.equal(v, read_checkpoint(again)["model"][k]) for k, v in fresh.items())
    assert not torch.equal(read_checkpoint(other)["model"]["blocks.0.attn.qkv.weight"],
                           fresh["blocks.0.attn.qkv.weight"])
    model, norms, _ = load_for_sampling(a)
    assert norms == pre["config"]["norms"] and not model.has_modality_template(0)


def test_predictions_are_k_averaged_samples_from_the_source_mapped_to_01(tmp_path, pretrained):
    index = effect_store(tmp_path / "store", n=10, source=True)
    # the scratch control through the fine-tuning job: from the random start, FLAIR -> T1w
    start = random_init_checkpoint(pretrained, tmp_path / "start.pt", seed=4)
    ckpt, _ = tune(tmp_path, index, start, sources=("FLAIR",),
                   train={"steps": 3, "global_batch": 4, "checkpoint_every": 1000,
                          "log_every": 1000, "sampling_weights": "model"})
    model, norms, config = load_for_sampling(ckpt)
    assert model.has_modality_template(0)  # set from its own training T1w
    store = ImageStore(index)
    images = _images(store, tmp_path / "images.tsv", n_test=3)
    got = ip.dit_predictions(_task(3), ckpt, index, tmp_path / "images.tsv", SAMPLING, REG)
    assert got.shape == (3, store.n_voxels) and got.dtype == np.float32
    np.testing.assert_allclose(got.min(axis=1), 0.0)
    np.testing.assert_allclose(got.max(axis=1), 1.0)
    # by hand: one row per test participant, its own FLAIR, k = 2 samples averaged
    test = images[images["set"] == "test"]
    rows = pd.DataFrame({"synthetic_id": np.arange(3), "participant_id": test["participant_id"],
                         "age": test["age"], "sex": test["sex"], "modality": "T1w"})
    src = source_images(ImageStore(index, modalities=["FLAIR"]), rows, ["FLAIR"])
    want = sample_table(model, norms, config, rows, SamplingConfig(**{**SAMPLING, "k": 2}),
                        REG, sources=src)
    np.testing.assert_allclose(got, normalise_01(want), atol=1e-5)
    one = ip.dit_predictions(_task(3, k=1), ckpt, index, tmp_path / "images.tsv", SAMPLING,
                             REG)
    assert not np.allclose(one, got)  # the second sample changes the average
    # a model of another mapping is refused naming both
    with pytest.raises(GenbrainInputError, match="maps T1w -> FLAIR"):
        ip.dit_predictions(_task(3, sources=("T1w",), modality="FLAIR"), ckpt, index,
                           tmp_path / "images.tsv", SAMPLING, REG)
    with pytest.raises(GenbrainInputError, match="3 test participants; the plan .* made for 2"):
        ip.dit_predictions(_task(2), ckpt, index, tmp_path / "images.tsv", SAMPLING, REG)


def test_a_model_of_several_sources_predicts_from_all_of_them(tmp_path, pretrained):
    """rest -> task's shape: two source channels (FLAIR and a second map) -> T1w, through the
    fine-tuning job and the sampler; each test participant's two sources, in the task's
    order, condition its samples, and a model of one source is refused for the task."""
    index = effect_store(tmp_path / "store", n=10, source=True)
    table = read_tsv(index)
    rng = np.random.default_rng(2)
    second = rng.standard_normal((10, ImageStore(index).n_voxels)).cumsum(axis=1) / 10
    write_shard(second, tmp_path / "store" / "VBM.npy", "float32")
    flair = table[table["modality"] == "FLAIR"]
    extra = flair.assign(modality="VBM", modality_index=2, shard="VBM.npy")
    save_tsv(pd.concat([table, extra], ignore_index=True), index)
    ckpt, _ = tune(tmp_path, index, pretrained, sources=("FLAIR", "VBM"),
                   train={"steps": 2, "global_batch": 4, "checkpoint_every": 1000,
                          "log_every": 1000, "sampling_weights": "model"})
    images = _images(ImageStore(index), tmp_path / "images.tsv", n_test=3)
    task = _task(3, sources=("FLAIR", "VBM"), k=1)
    got = ip.dit_predictions(task, ckpt, index, tmp_path / "images.tsv", SAMPLING, REG)
    model, norms, config = load_for_sampling(ckpt)
    assert list(config.sources) == ["FLAIR", "VBM"]
    test = images[images["set"] == "test"]
    rows = pd.DataFrame({"synthetic_id": np.arange(3), "participant_id": test["participant_id"],
                         "age": test["age"], "sex": test["sex"], "modality": "T1w"})
    src = source_images(ImageStore(index), rows, ["FLAIR", "VBM"])  # (3, 2, V)
    want = sample_table(model, norms, config, rows, SamplingConfig(**{**SAMPLING, "k": 1}),
                        REG, sources=src)
    np.testing.assert_allclose(got, normalise_01(want), atol=1e-5)
    # the channels' order is the model's: the task listing them the other way is refused
    with pytest.raises(GenbrainInputError, match=r"source images \['FLAIR', 'VBM'\]"):
        ip.dit_predictions(_task(3, sources=("VBM", "FLAIR")), ckpt, index,
                           tmp_path / "images.tsv", SAMPLING, REG)
    # and so is a model of one source
    one = _one_source(tmp_path, pretrained)
    with pytest.raises(GenbrainInputError, match=r"maps FLAIR \+ VBM -> T1w"):
        ip.dit_predictions(task, one, index, tmp_path / "images.tsv", SAMPLING, REG)


def _one_source(tmp_path, pretrained):
    index = effect_store(tmp_path / "one", n=6, source=True)
    ckpt, _ = tune(tmp_path / "one", index, pretrained, sources=("FLAIR",),
                   train={"steps": 1, "global_batch": 2, "checkpoint_every": 1000,
                          "log_every": 1000, "sampling_weights": "model"})
    return ckpt


def test_the_training_set_is_the_pairs_training_participants(tmp_path):
    images = pd.DataFrame({"participant_id": ["a", "b", "c"], "set": ["test", "train", "train"],
                           "row": [0, 0, 1], "site": "S", "age": 50.0, "sex": "F"})
    save_tsv(images, tmp_path / "images.tsv")
    out = ip.training_participants(tmp_path / "images.tsv", tmp_path / "training.tsv")
    assert list(out["participant_id"]) == ["b", "c"] and set(out["split"]) == {"train"}
    save_tsv(images.iloc[:1], tmp_path / "none.tsv")
    with pytest.raises(GenbrainInputError, match="no training participants"):
        ip.training_participants(tmp_path / "none.tsv", tmp_path / "t.tsv")
