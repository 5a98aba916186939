"""Fine-tuning: each kind of condition learns its planted effect on tiny data, new heads start
at the pretrained model's output, a stopped fine-tune resumes bitwise, label tokens are added,
trained and rebuilt for sampling, synthesis from a fine-tune uses its conditions, and the
parse-time plan names every mistake in one line.

Models are nano widths with patch 16 on 512-voxel toy stores (see
tests/unit/training/test_loop.py)."""

import argparse
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from genbrain.errors import GenbrainInputError
from genbrain.fidelity import fidelity_table
from genbrain.figures import finetune_checks_figure
from genbrain.finetune import (
    MIN_PER_LEVEL,
    FinetuneJob,
    finetune_checks,
    plan_finetunes,
    run_finetune,
    training_table,
    write_checks,
)
from genbrain.io import save_tsv
from genbrain.modalities import DEFAULT_REGISTRY, ModalityRegistry
from genbrain.model.diffusion import GaussianDiffusion
from genbrain.pretrain import loss_table
from genbrain.sampling import SamplingConfig, condition_labels, sample_table
from genbrain.space import standard_space
from genbrain.store import ImageStore, write_shard
from genbrain.training.checkpoints import load_for_sampling, read_checkpoint
from genbrain.training.config import TrainConfig
from genbrain.training.data import VoxelDataset
from genbrain.training.loop import train
from genbrain.training.surgery import build_model, implied_surgeries, operate
from tests.unit.training.test_loop import V, config, make_store, one_line

PATTERN = np.where((np.arange(V) % 128) < 40, 1.0, -0.5)  # the planted effect map
# the toy models' modality table: T1w = 0, FLAIR = 1
REG = ModalityRegistry([replace(DEFAULT_REGISTRY["T1w"], index=0),
                        replace(DEFAULT_REGISTRY["FLAIR"], index=1)])


def effect_store(root: Path, n: int = 16, *, modality: str = "T1w", index: int = 0,
                 seed: int = 7, diagnosis: bool = False, score: bool = False,
                 source: bool = False, bd: bool = False) -> Path:
    """n smooth toy images with a planted effect: patients (diagnosis) or the score add
    PATTERN; with ``bd``, every third participant is BD, whose images subtract it; with
    ``source``, each participant also has a FLAIR image (index 1) whose values
    the target copies (target = 0.8 source + 0.2 noise)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.sin(np.arange(V) / 20.0) * rng.uniform(0.5, 1.5, (n, 1))
    x = base + 0.1 * rng.standard_normal((n, V))
    cols = {}
    if diagnosis:
        dx = np.array((["CN", "SCZ", "BD"] if bd else ["CN", "SCZ"]) * n)[:n]
        x = x + 0.8 * ((dx == "SCZ").astype(float) - (dx == "BD"))[:, None] * PATTERN
        cols["diagnosis"] = dx
    if score:
        s = np.linspace(0, 10, n)
        x = x + 0.15 * (s - 5)[:, None] * PATTERN
        cols["nihss"] = s
    ids = [f"sub-{i:02d}" for i in range(n)]
    rows = {"participant_id": ids, "site": "a", "age": 40.0 + 2 * np.arange(n),
            "sex": (["M", "F"] * n)[:n], **cols}
    frames = [pd.DataFrame({**rows, "modality": modality, "modality_index": index,
                            "shard": f"{modality}.npy", "row": range(n)})]
    if source:
        src = rng.standard_normal((n, V)).cumsum(axis=1) / 10  # smooth, subject-specific
        x = 0.8 * src + 0.2 * rng.standard_normal((n, V))
        write_shard(src, root / "FLAIR.npy", "float32")
        frames.append(pd.DataFrame({**rows, "modality": "FLAIR", "modality_index": 1,
                                    "shard": "FLAIR.npy", "row": range(n)}))
    write_shard(x, root / f"{modality}.npy", "float32")
    save_tsv(pd.concat(frames, ignore_index=True), root / "index.tsv")
    return root / "index.tsv"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A nano model pretrained for a few steps on T1w (index 0) and FLAIR (index 1), with the
    demo's learning settings (v-prediction, modality templates)."""
    root = tmp_path_factory.mktemp("pre")
    t1 = make_store(root / "t1", n=8)
    flair = make_store(root / "flair", n=8, modality="FLAIR", index=1, seed=1)
    return train(config(steps=6, modality_templates=True, prediction="v"), [t1, flair],
                 root / "run").checkpoint


def job(**changes) -> FinetuneJob:
    base = {"task": "t", "unit": "a", "cohort": "c", "sites": ("a",), "modalities": ("T1w",),
            "diagnosis_levels": None, "score_column": None, "sources": (),
            "demographics": True, "split": "all", "init": "pretrain",
            "train": {"steps": 150, "global_batch": 8, "lr": 5e-3, "ema_decay": 0.9,
                      "checkpoint_every": 1000, "log_every": 1000, "sampling_weights": "model",
                      "label_dropout": 0.2}}
    return FinetuneJob(**{**base, **changes})


def tune(tmp: Path, store: Path, pretrained: Path, **changes) -> tuple[Path, Path]:
    """Fine-tune ``pretrained`` on every participant of ``store``; (checkpoint, training)."""
    j = job(**changes)
    training = tmp / "training.tsv"
    save_tsv(training_table(j, ImageStore(store).table.drop_duplicates("participant_id"),
                            None), training)
    ckpt = run_finetune(j, store, training, pretrained, tmp / "work", tmp / "ckpt.pt", seed=1)
    return ckpt, training


def test_disease_head_learns_the_planted_patients_minus_controls_map(tmp_path, pretrained):
    store = effect_store(tmp_path / "s", diagnosis=True)
    ckpt, training = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ"))
    saved = read_checkpoint(ckpt)["config"]
    assert saved["surgeries"] == [["add_disease_head", 2]]  # implied, never named
    assert saved["meta"]["task"]["diagnosis_levels"] == ["CN", "SCZ"]
    assert saved["meta"]["training_participants"][:2] == ["sub-00", "sub-01"]
    assert saved["train"]["preset"] == "nano/256"  # inherited from the init checkpoint
    checks, maps = finetune_checks(ckpt, store, training, {"diagnosis": {"T1w": PATTERN},
                                                           "score": {"T1w": -PATTERN}})
    value = dict(zip(checks["check"], checks["value"]))
    assert value["disease_effect_vs_truth"] > 0.6
    assert value["disease_effect_vs_site"] > 0.6
    assert value["disease_effect_sd"] > 0
    assert set(maps[("T1w", "disease", "SCZ minus CN")]) == {"model", "site", "truth"}
    assert set(checks.loc[checks["check"].str.startswith("disease"), "contrast"]) == {
        "SCZ minus CN"}


def test_a_three_level_fine_tune_checks_every_level_against_the_control(tmp_path, pretrained):
    """SCZ carries the planted map and BD its opposite: one row per contrast and check, each
    contrast measured against its own groups (the BD rows point the other way)."""
    store = effect_store(tmp_path / "s", n=18, diagnosis=True, bd=True)
    ckpt, training = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ", "BD"))
    checks, maps = finetune_checks(ckpt, store, training, {"diagnosis": {"T1w": PATTERN}})
    disease = checks[checks["check"].str.startswith("disease")]
    assert sorted(set(disease["contrast"])) == ["BD minus CN", "SCZ minus CN"]
    assert not checks.duplicated(["check", "modality", "contrast"]).any()
    assert len(disease) == 2 * 4  # effect_sd, effect_vs_site, effect_vs_truth, site_vs_truth
    value = {(c, k): v for c, k, v in zip(checks["check"], checks["contrast"], checks["value"])}
    assert value[("disease_site_vs_truth", "SCZ minus CN")] > 0.6
    assert value[("disease_site_vs_truth", "BD minus CN")] < -0.6
    for contrast, sign in (("SCZ minus CN", 1), ("BD minus CN", -1)):
        assert value[("disease_effect_vs_site", contrast)] > 0.6
        assert sign * value[("disease_effect_vs_truth", contrast)] > 0.6
        assert set(maps[("T1w", "disease", contrast)]) == {"model", "site", "truth"}
    # the figure and the fidelity record read the table: a panel row and a row per contrast
    rng = np.random.default_rng(0)
    full = {key: {kind: rng.standard_normal(standard_space().n_voxels) for kind in m}
            for key, m in maps.items()}  # the figure draws standard-space maps
    finetune_checks_figure(loss_table(ckpt), checks, full, tmp_path / "checks.png")
    assert (tmp_path / "checks.png").stat().st_size > 10_000
    write_checks(checks, {"task": "dx", "unit": "all"},
                 tmp_path / "results" / "finetune" / "dx" / "all" / "checks.tsv")
    record = fidelity_table(tmp_path / "results")
    rows = record[record["claim_id"] == "finetune.disease_direction"].set_index("subject")
    assert sorted(rows.index) == ["dx/all T1w BD minus CN", "dx/all T1w SCZ minus CN"]
    assert rows.loc["dx/all T1w BD minus CN", "measured"] == pytest.approx(
        value[("disease_effect_vs_truth", "BD minus CN")])


def test_score_head_learns_the_planted_score_map(tmp_path, pretrained):
    store = effect_store(tmp_path / "s", score=True)
    ckpt, training = tune(tmp_path, store, pretrained, score_column="nihss")
    assert read_checkpoint(ckpt)["config"]["surgeries"] == [["add_score_head"]]
    # each head against its own effect's map (the diagnosis map here is the wrong one)
    checks, _ = finetune_checks(ckpt, store, training, {"score": {"T1w": PATTERN},
                                                        "diagnosis": {"T1w": -PATTERN}})
    value = dict(zip(checks["check"], checks["value"]))
    assert value["score_effect_vs_truth"] > 0.6


def test_a_new_modality_gets_its_own_row_and_template(tmp_path, pretrained):
    store = effect_store(tmp_path / "s", modality="ADC", index=2)  # beyond the 2-row table
    ckpt, _ = tune(tmp_path, store, pretrained, modalities=("ADC",), train={
        **job().train, "steps": 40})
    saved = read_checkpoint(ckpt)
    assert saved["config"]["surgeries"] == [["extend_modalities", 1]]
    model, norms, cfg = load_for_sampling(ckpt)
    assert model.spec()["n_modalities"] == 3 and model.has_modality_template(2)
    # the clean-image estimate of an ADC item resembles ADC images, and the learned row moved
    data = VoxelDataset([ImageStore(store)], norms=norms)
    batch = data.__getitems__(list(range(8)))
    diffusion = GaussianDiffusion.linear(prediction=cfg.prediction)
    t = torch.full((8,), 300)
    x_t = diffusion.q_sample(batch["x"].float(), t, torch.randn(8, 1, V,
                                                              generator=torch.Generator()))
    labels = {k: v for k, v in batch.items() if k != "x"}
    with torch.no_grad():
        out = model(x_t, diffusion.model_timesteps(t), **labels)
    _, x0 = diffusion.eps_and_xstart(out[:, :1], x_t, t)
    mean = batch["x"].float().mean(0)[0]
    r = np.corrcoef(x0[:, 0].mean(0).numpy(), mean.numpy())[0, 1]
    assert r > 0.8
    assert model.modality_embedder.weight[2].abs().sum() > 0


def test_source_channels_carry_the_paired_image(tmp_path, pretrained):
    store = effect_store(tmp_path / "s", source=True)
    ckpt, training = tune(tmp_path, store, pretrained, sources=("FLAIR",), demographics=False,
                          train={**job().train, "steps": 80})
    saved = read_checkpoint(ckpt)["config"]
    assert saved["surgeries"] == [["widen_input", 1]]
    assert saved["train"]["sources"] == ["FLAIR"] and saved["train"]["demographics"] is False
    checks, _ = finetune_checks(ckpt, store, training)
    value = dict(zip(checks["check"], checks["value"]))
    # the estimate follows each subject's own source image (the population mean alone does not)
    assert value["x0_vs_target"] > 0.6
    model, norms, cfg = load_for_sampling(ckpt)
    table = pd.DataFrame({"synthetic_id": [0, 1], "age": 50.0, "sex": "F", "modality": "T1w"})
    labels = condition_labels(table, model, norms, cfg, REG)
    assert labels["sex"].tolist() == [2, 2] and labels["age"].tolist() == [0.0, 0.0]  # nulls
    with pytest.raises(GenbrainInputError, match="takes 1 source images per row"):
        sample_table(model, norms, cfg, table, SamplingConfig(steps=2), REG)


@pytest.mark.parametrize("label_tokens", [False, True])
def test_new_heads_start_exactly_at_the_pretrained_output(tmp_path, pretrained, label_tokens):
    ckpt = read_checkpoint(pretrained)
    cfg = config(diagnosis_levels=["CN", "SCZ"], score_column="nihss", sources=["FLAIR"],
                 modality_templates=True, prediction="v")
    store = effect_store(tmp_path / "s", diagnosis=True, source=True)
    index = pd.read_csv(store, sep="\t")
    index["nihss"] = 3.0
    save_tsv(index, store)
    data = VoxelDataset([ImageStore(store)], modalities=["T1w"], norms=ckpt["config"]["norms"],
                        diagnosis_levels=["CN", "SCZ"], score_column="nihss",
                        sources=["FLAIR"])
    before = build_model(cfg, V, ckpt, pretrained, None).eval()
    after = build_model(cfg, V, ckpt, pretrained, None).eval()
    implied = implied_surgeries(after, data, label_tokens)
    assert [s[0] for s in implied] == ["add_disease_head", "add_score_head", "widen_input"] + [
        "add_label_tokens"] * label_tokens
    operate(after, implied, seed=0)
    batch = data.__getitems__(list(range(4)))
    x, t = torch.randn(4, 1, V), torch.tensor([10, 200, 500, 900])
    labels = {k: batch[k] for k in ("age", "sex", "modality")}
    with torch.no_grad():
        ref = before(x, t, **labels)
        new = after(torch.cat([x, batch["x_cond"].float()], dim=1), t, **labels,
                    disease=batch["disease"], score=torch.full((4,), 1.7))
    assert torch.equal(ref, new)


@pytest.mark.parametrize("label_tokens", [False, True])
def test_a_stopped_fine_tune_resumes_bitwise(tmp_path, pretrained, label_tokens):
    store = effect_store(tmp_path / "s", diagnosis=True)
    steps = {**job().train, "checkpoint_every": 3, "label_tokens": label_tokens}
    whole, _ = tune(tmp_path / "whole", store, pretrained, diagnosis_levels=("CN", "SCZ"),
                    train={**steps, "steps": 6})
    tune(tmp_path / "parts", store, pretrained, diagnosis_levels=("CN", "SCZ"),
         train={**steps, "steps": 3})  # stopped after its step-3 checkpoint
    resumed, _ = tune(tmp_path / "parts", store, pretrained, diagnosis_levels=("CN", "SCZ"),
                      train={**steps, "steps": 6})
    a, b = read_checkpoint(whole), read_checkpoint(resumed)
    assert a["step"] == b["step"] == 6
    assert ("disease_tokens" in a["model"]) == label_tokens
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["losses"], b["losses"])


def test_label_tokens_train_round_trip_and_reach_the_checks(tmp_path, pretrained):
    """``label_tokens``: the tokens are added after the disease head, recorded with the
    implied surgeries, trained from zero; the sampler's model (rebuilt from the checkpoint's
    spec) is the trainer's; the one-step and paired-sample checks run on it."""
    store = effect_store(tmp_path / "s", diagnosis=True)
    index = pd.read_csv(store, sep="\t")
    index["sex"] = ["M", "M", "F", "F"] * 4  # not confounded with the diagnosis
    save_tsv(index, store)
    ckpt, training = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ"),
                          train={**job().train, "label_tokens": True})
    saved = read_checkpoint(ckpt)
    assert saved["config"]["surgeries"] == [["add_disease_head", 2], ["add_label_tokens"]]
    assert saved["config"]["model"]["label_tokens"] and saved["config"]["train"]["label_tokens"]
    tokens = saved["model"]["disease_tokens"]  # (levels, T, D): zero at surgery, trained
    assert tokens.shape == (2, V // 16, 64) and (tokens.abs().sum(dim=(1, 2)) > 0).all()
    # the trainer's model (init + implied surgeries + the weights) is the sampler's
    cfg = TrainConfig.from_dict(saved["config"]["train"])
    init = read_checkpoint(pretrained)
    data = VoxelDataset([ImageStore(store)], modalities=["T1w"],
                        norms=saved["config"]["norms"], diagnosis_levels=["CN", "SCZ"])
    built = build_model(cfg, V, init, pretrained, None)
    operate(built, implied_surgeries(built, data, label_tokens=True), seed=0)
    built.load_state_dict(saved["model"])  # strict: the same parameters
    sampler, _, _ = load_for_sampling(ckpt)
    batch = data.__getitems__(list(range(4)))
    labels = {k: batch[k] for k in ("age", "sex", "modality", "disease")}
    x, t = torch.randn(4, 1, V), torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        assert torch.equal(built.eval()(x, t, **labels), sampler(x, t, **labels))
    checks, _ = finetune_checks(ckpt, store, training, {"diagnosis": {"T1w": PATTERN}},
                                paired_samples=4, sampling=PAIRED, registry=REG_FIXED)
    value = {(c, m): v for c, m, v in zip(checks["check"], checks["method"], checks["value"])}
    assert value[("disease_effect_sd", "one-step")] > 0
    assert value[("disease_sample_sd", "paired-sample")] > 0
    assert value[("disease_sample_vs_truth", "paired-sample")] > 0.5
    assert np.isfinite(value[("disease_sample_gain", "paired-sample")])


@pytest.mark.parametrize("key, param, extra", [
    ("label_tokens_lr", "disease_tokens", {"label_tokens": True}),
    ("label_heads_lr", "disease_embedder.weight", {}),
])
def test_a_label_lr_moves_only_its_parameters_faster(tmp_path, pretrained, key, param, extra):
    """``label_tokens_lr`` / ``label_heads_lr``: the label tokens / the disease embedder get
    their own AdamW group. AdamW's first step moves each entry by lr x g / (|g| + eps), and the
    zero-initialised parameters change no forward pass before it, so after one step they are
    exactly the ratio of the rates apart and every other weight is bitwise the same."""
    store = effect_store(tmp_path / "s", diagnosis=True)
    one = {**job().train, "steps": 1, **extra}
    runs = {}
    for name, lr in (("same", None), ("fast", 0.05)):
        ckpt, _ = tune(tmp_path / name, store, pretrained, diagnosis_levels=("CN", "SCZ"),
                       train={**one, key: lr})
        runs[name] = read_checkpoint(ckpt)["model"]
    same, fast = runs["same"], runs["fast"]
    assert same[param].abs().max() > 0
    torch.testing.assert_close(fast[param], same[param] * (0.05 / 5e-3), rtol=1e-5, atol=1e-9)
    assert all(torch.equal(same[k], fast[k]) for k in same if k != param)


@pytest.mark.parametrize("key", ["label_tokens_lr", "label_heads_lr"])
def test_label_lrs_are_checked(key):
    with pytest.raises(GenbrainInputError, match=f"'{key}' is -1"):
        TrainConfig(**{key: -1})


@pytest.mark.parametrize("mode", ["new-modules-only", "last-k-blocks"])
def test_label_tokens_train_when_the_pretrained_weights_are_frozen(tmp_path, pretrained, mode):
    store = effect_store(tmp_path / "s", diagnosis=True)
    ckpt, _ = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ"),
                   train={**job().train, "steps": 3, "finetune": mode, "finetune_k": 1,
                          "label_tokens": True})
    a, b = read_checkpoint(pretrained)["model"], read_checkpoint(ckpt)["model"]
    assert b["disease_tokens"].abs().sum() > 0  # new, like the head: trained from zero
    assert torch.equal(a["blocks.0.mlp.fc1.weight"], b["blocks.0.mlp.fc1.weight"])  # frozen


def test_label_tokens_without_a_head_are_a_one_line_error(tmp_path, pretrained):
    store = effect_store(tmp_path / "s")
    with pytest.raises(GenbrainInputError) as err:  # a fine-tune on the modality only
        tune(tmp_path, store, pretrained, train={**job().train, "label_tokens": True})
    assert "'label_tokens' is true but the model has no disease or score head" in one_line(err)
    with pytest.raises(GenbrainInputError, match="'label_tokens' is true"):  # a fresh model
        train(config(label_tokens=True), store, tmp_path / "fresh")


def test_a_checkpoint_from_before_label_tokens_still_loads(tmp_path, pretrained):
    record = torch.load(pretrained, map_location="cpu", weights_only=True)
    for section in ("model", "train"):
        del record["config"][section]["label_tokens"]
    torch.save(record, tmp_path / "old.pt")
    old, _, old_cfg = load_for_sampling(tmp_path / "old.pt")
    new, _, _ = load_for_sampling(pretrained)
    assert not old.label_tokens and not old_cfg.label_tokens
    x, t = torch.randn(2, 1, V), torch.tensor([100, 700])
    labels = {"age": torch.zeros(2), "sex": torch.tensor([0, 1]), "modality": torch.tensor([0, 1])}
    with torch.no_grad():
        assert torch.equal(old(x, t, **labels), new(x, t, **labels))


def test_synthesis_from_a_fine_tune_uses_its_diagnosis(tmp_path, pretrained):
    store = effect_store(tmp_path / "s", diagnosis=True)
    ckpt, _ = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ"))
    model, norms, cfg = load_for_sampling(ckpt)
    table = pd.DataFrame({"synthetic_id": [0, 1], "age": 50.0, "sex": "F",
                          "modality": "T1w", "diagnosis": ["CN", "SCZ"]})
    reg = REG
    labels = condition_labels(table, model, norms, cfg, reg)
    assert labels["disease"].tolist() == [0, 1]
    # the same noise (synthetic_id 0 for both rows), only the diagnosis differs
    table["synthetic_id"] = [0, 0]
    with pytest.raises(GenbrainInputError, match="synthetic_id 0 is used twice"):
        sample_table(model, norms, cfg, table, SamplingConfig(steps=4), reg)
    one = sample_table(model, norms, cfg, table.iloc[:1], SamplingConfig(steps=4), reg)
    two = sample_table(model, norms, cfg, table.iloc[1:], SamplingConfig(steps=4), reg)
    diff = (two - one)[0]
    assert np.corrcoef(diff, PATTERN)[0, 1] > 0.5  # SCZ minus CN follows the planted map
    with pytest.raises(GenbrainInputError, match="table needs a 'diagnosis' column"):
        condition_labels(table.iloc[:1].drop(columns="diagnosis"), model, norms, cfg, reg)


# --------------------------------------------------------------------------------------------
# The paired-sample check (issue 28 item 1)
# --------------------------------------------------------------------------------------------

PAIRED = SamplingConfig(steps=3, guidance=1.2, batch_size=2, seed=5)  # 3 pairs: 2 batches
# the toy stores' values as a fixed normalisation with std 1: a planted map is in store units
REG_FIXED = ModalityRegistry([replace(DEFAULT_REGISTRY["T1w"], index=0, norm="fixed", mean=0.0,
                                      std=1.0, clamp=None),
                              replace(DEFAULT_REGISTRY["FLAIR"], index=1)])


def without_labels(ckpt: Path, out: Path) -> Path:
    """A copy of a checkpoint whose age, sex and disease embedders output zeros in both weight
    sets: its samples cannot depend on those labels."""
    record = torch.load(ckpt, map_location="cpu", weights_only=True)
    for weights in ("model", "ema"):
        for name, value in record[weights].items():
            if name.startswith(("disease_embedder.", "sex_embedder.", "age_embedder.mlp.2.")):
                value.zero_()
    torch.save(record, out)
    return out


def test_paired_samples_cancel_the_noise_exactly(tmp_path, pretrained):
    """Pairs start from identical noise: with labels the model ignores, every paired difference
    is exactly zero (so nothing but the label can make one); with labels it uses, they are not.
    The rows sit beside the one-step ones, told apart by their method."""
    store = effect_store(tmp_path / "s", diagnosis=True)
    ckpt, training = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ"),
                          train={**job().train, "steps": 2})
    truth = {"diagnosis": {"T1w": PATTERN}, "age": {"T1w": np.cos(np.arange(V) / 9.0)},
             "sex": {"T1w": -PATTERN}}
    reference = {"T1w": 1.0 + 0.2 * np.sin(np.arange(V) / 7.0)}  # T1w z-scored per image
    blind = without_labels(ckpt, tmp_path / "blind.pt")
    checks, maps = finetune_checks(blind, store, training, truth, paired_samples=3,
                                   sampling=PAIRED, registry=REG, reference=reference)
    paired = checks[checks["method"] == "paired-sample"].set_index(["check", "contrast"])
    sd = paired.loc[paired.index.get_level_values(0).str.endswith("_sample_sd"), "value"]
    assert sorted(sd.index) == [("age_sample_sd", "age 75 minus 50 years"),
                                ("disease_sample_sd", "SCZ minus CN"),
                                ("sex_sample_sd", "sex M minus F")]
    assert (sd == 0.0).all()  # exactly: the same noise, the same computation
    for key, m in maps.items():
        if "sample" in m:
            assert not m["sample"].any(), key
    gains = paired.loc[paired.index.get_level_values(0).str.endswith("_sample_gain"), "value"]
    assert len(gains) == 3 and (gains == 0.0).all()
    # the same check on the model that uses its labels: every label moves the samples
    checks, _ = finetune_checks(ckpt, store, training, truth, paired_samples=3,
                                sampling=PAIRED, registry=REG)
    sd = checks[checks["check"].str.endswith("_sample_sd")]["value"]
    assert len(sd) == 3 and (sd > 0).all()


def test_paired_samples_of_a_pretrained_model_on_chosen_modalities(tmp_path, pretrained):
    """A pretrained model (no modalities of its own: those of its store) is checked on the
    modalities named, with age and sex rows only, and its gains are the fidelity record's
    pretrain rows; a modality a fine-tune lacks is a one-line error."""
    index = make_store(tmp_path / "both", n=8)  # T1w (index 0) and FLAIR (index 1), one store
    flair = make_store(tmp_path / "flair", n=8, modality="FLAIR", index=1, seed=1)
    (tmp_path / "flair" / "FLAIR.npy").rename(tmp_path / "both" / "FLAIR.npy")
    both = pd.concat([pd.read_csv(index, sep="\t"), pd.read_csv(flair, sep="\t")])
    save_tsv(both, index)
    training = both.drop_duplicates("participant_id")  # a table works as well as its TSV
    truth = {"age": {"T1w": PATTERN}}  # T1w is a fixed normalisation in REG_FIXED: a gain
    checks, maps = finetune_checks(pretrained, index, training, truth, paired_samples=2,
                                   sampling=PAIRED, registry=REG_FIXED, modalities=["T1w"])
    paired = checks[checks["method"] == "paired-sample"]
    assert set(paired["modality"]) == {"T1w"}
    assert {"age_sample_sd", "age_sample_vs_truth", "age_sample_gain", "age_site_gain",
            "sex_sample_sd"} <= set(paired["check"])
    assert not paired["check"].str.startswith("disease").any()
    assert (paired[paired["check"] == "age_sample_sd"]["value"] > 0).all()
    assert "truth" in maps[("T1w", "age", "age 75 minus 50 years")]
    write_checks(checks, {"task": "pretrain", "unit": "all"},
                 tmp_path / "results" / "pretrain" / "checks.tsv")
    record = fidelity_table(tmp_path / "results")
    rows = record[record["claim_id"] == "pretrain.paired_sample_gain"]
    assert rows["subject"].tolist() == ["pretrained T1w age 75 minus 50 years"]
    gain = paired.loc[paired["check"] == "age_sample_gain", "value"].item()
    assert rows["measured"].item() == pytest.approx(gain)
    every, _ = finetune_checks(pretrained, index, training, truth,
                               paired_samples=1, sampling=PAIRED, registry=REG_FIXED)
    assert set(every[every["method"] == "paired-sample"]["modality"]) == {"FLAIR", "T1w"}
    ckpt, _ = tune(tmp_path / "tuned", index, pretrained, train={**job().train, "steps": 1})
    with pytest.raises(GenbrainInputError, match="not the model's"):  # a T1w fine-tune
        finetune_checks(ckpt, index, training, modalities=["FLAIR"])


def test_paired_sample_rows_maps_figure_and_record(tmp_path, pretrained):
    """A fine-tune that learned its planted map carries it into paired samples; the rows (one
    per label, modality, contrast and check), the maps, the figure's extra column and the
    fidelity record's rows all come from one call."""
    store = effect_store(tmp_path / "s", diagnosis=True)
    index = pd.read_csv(store, sep="\t")
    index["sex"] = ["M", "M", "F", "F"] * 4  # not confounded with the diagnosis (CN, SCZ, ...)
    save_tsv(index, store)
    ckpt, training = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ"))
    checks, maps = finetune_checks(ckpt, store, training, {"diagnosis": {"T1w": PATTERN}},
                                   paired_samples=4, sampling=PAIRED, registry=REG_FIXED)
    assert list(checks.columns) == ["check", "method", "modality", "contrast", "value", "detail"]
    assert set(checks["method"]) == {"training", "one-step", "paired-sample"}
    assert not checks.duplicated(["check", "modality", "contrast"]).any()
    one_step = checks[checks["method"] == "one-step"]
    assert set(one_step["check"]) == {"disease_effect_sd", "disease_effect_vs_site",
                                      "disease_effect_vs_truth", "disease_site_vs_truth"}
    paired = checks[checks["method"] == "paired-sample"]
    # the diagnosis has a planted map here, age and sex none: no truth rows for them
    assert sorted(zip(paired["check"], paired["contrast"])) == [
        ("age_sample_sd", "age 75 minus 50 years"),
        ("age_sample_vs_site", "age 75 minus 50 years"),
        ("disease_sample_gain", "SCZ minus CN"), ("disease_sample_sd", "SCZ minus CN"),
        ("disease_sample_vs_site", "SCZ minus CN"), ("disease_sample_vs_truth", "SCZ minus CN"),
        ("disease_site_gain", "SCZ minus CN"),
        ("sex_sample_sd", "sex M minus F"), ("sex_sample_vs_site", "sex M minus F"),
        ("truth_to_store_scale", "")]
    value = {c: v for c, v in zip(paired["check"], paired["value"])}
    assert value["disease_sample_vs_truth"] > 0.5 and value["disease_sample_vs_site"] > 0.5
    # the toy patients' images carry 0.8 x the planted map: the site's data show ~0.8 of it,
    # and the samples of a model that learned it carry a good part
    assert value["truth_to_store_scale"] == 1.0
    assert value["disease_site_gain"] == pytest.approx(0.8, abs=0.15)  # + sampling noise
    assert 0.3 < value["disease_sample_gain"] < 1.2
    assert set(maps[("T1w", "disease", "SCZ minus CN")]) == {"model", "sample", "site", "truth"}
    assert set(maps[("T1w", "age", "age 75 minus 50 years")]) == {"sample", "site"}
    rng = np.random.default_rng(0)
    full = {key: {kind: rng.standard_normal(standard_space().n_voxels) for kind in m}
            for key, m in maps.items()}  # the figure draws standard-space maps
    finetune_checks_figure(loss_table(ckpt), checks, full, tmp_path / "checks.png")
    assert (tmp_path / "checks.png").stat().st_size > 10_000
    write_checks(checks, {"task": "dx", "unit": "all"},
                 tmp_path / "results" / "finetune" / "dx" / "all" / "checks.tsv")
    record = fidelity_table(tmp_path / "results")
    rows = record[record["claim_id"] == "finetune.paired_sample_gain"]
    assert rows["subject"].tolist() == ["dx/all T1w SCZ minus CN"]
    assert rows["measured"].item() == pytest.approx(value["disease_sample_gain"])


def test_the_planted_change_in_store_units():
    """(x - mean) / std: a planted raw change is change / std in the store, with or without the
    image it changes; a per-image z-score divides it by that image's SD, which only the
    reference image can tell (without one there is no gain, rather than a wrong one)."""
    from genbrain.finetune import _planted_in_store_units

    rng = np.random.default_rng(0)
    reference = 0.5 + 0.1 * np.sin(np.arange(4000) / 30.0)  # inside VBM's clamp [0, 1]
    change = 1e-3 * rng.standard_normal(4000)
    vbm = DEFAULT_REGISTRY["VBM"]
    exact, how = _planted_in_store_units(change, DEFAULT_REGISTRY, "VBM", None)
    np.testing.assert_allclose(exact, change / vbm.std)
    assert "fixed" in how
    at_ref, _ = _planted_in_store_units(change, DEFAULT_REGISTRY, "VBM", reference)
    np.testing.assert_allclose(at_ref, change / vbm.std, atol=1e-6)
    z, _ = _planted_in_store_units(change, DEFAULT_REGISTRY, "T1w", reference)
    slope = np.polyfit(change, z, 1)[0]
    assert slope == pytest.approx(1 / reference.std(), rel=0.02)
    none, how = _planted_in_store_units(change, DEFAULT_REGISTRY, "T1w", None)
    assert none is None and "no reference image" in how


def test_the_paired_sample_setting_is_in_the_schema_and_both_configs():
    from genbrain.config import load_yaml, validate_config
    from tests.conftest import ROOT

    schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    demo = load_yaml(ROOT / "config" / "demo.yaml")
    paper = load_yaml(ROOT / "config" / "config.yaml")
    assert paper["finetune"]["checks"]["paired_samples"] == 32
    assert 0 < demo["finetune"]["checks"]["paired_samples"] <= 8  # ~30 s per label on 2 cores
    assert validate_config(demo, schema)["finetune"]["checks"]["paired_samples"] == \
        demo["finetune"]["checks"]["paired_samples"]
    del demo["finetune"]["checks"]
    assert validate_config(demo, schema)["finetune"]["checks"]["paired_samples"] == 8
    for bad in (-1, 2.5):
        demo["finetune"]["checks"] = {"paired_samples": bad}
        with pytest.raises(GenbrainInputError, match="paired_samples"):
            validate_config(demo, schema)
    demo["finetune"]["checks"] = {"pairs": 8}
    with pytest.raises(GenbrainInputError, match="pairs"):
        validate_config(demo, schema)


# --------------------------------------------------------------------------------------------
# The plan (parse time, no torch)
# --------------------------------------------------------------------------------------------


def cohort(n_per_level=(6, 6), sites=("a", "b"), scores=None):
    rows = []
    for s in sites:
        for level, n in zip(("CN", "SCZ"), n_per_level):
            for i in range(n):
                rows.append({"participant_id": f"sub-{s}{level}{i}", "site": s,
                             "diagnosis": level, "age": 40.0 + i, "sex": "MF"[i % 2],
                             "severity": np.nan if scores == "missing" and i == 2 else i})
    table = pd.DataFrame(rows)
    spec = {"modalities": ["T1w", "VBM"], "diagnosis_levels": ["CN", "SCZ"],
            "scores": ["severity"]}
    return SimpleNamespace(modalities=spec["modalities"], spec=spec, table=table,
                           sites=sorted(sites), site_label=lambda s: s.replace("_", ""))


def plan(tasks, cohorts=None, pretrain="pop", train=None):
    cfg = {"finetune": {"train": train or {}, "tasks": tasks}}
    return plan_finetunes(cfg, cohorts or {"scz": cohort()}, pretrain)


def test_a_per_site_task_is_one_job_per_site_with_the_shared_settings():
    jobs = plan({"bwas": {"cohort": "scz", "conditions": ["diagnosis"], "per_site": True,
                          "train": {"steps": 7}}}, train={"steps": 5, "lr": 1e-3})
    assert sorted(jobs) == ["bwas/a", "bwas/b"]
    j = jobs["bwas/a"]
    assert j.sites == ("a",) and j.diagnosis_levels == ("CN", "SCZ")
    assert j.modalities == ("T1w", "VBM") and j.train == {"steps": 7, "lr": 1e-3}
    assert j.out_dir == "results/finetune/bwas/a"
    assert FinetuneJob.from_dict(j.to_dict()) == j
    pooled = plan({"all": {"cohort": "scz", "conditions": ["severity"]}})
    assert list(pooled) == ["all/all"] and pooled["all/all"].score_column == "severity"


@pytest.mark.parametrize("task, message", [
    ({"cohort": "mdd"}, "'finetune.tasks.t.cohort' is 'mdd', not a cohort"),
    ({"cohort": "scz", "modalities": ["FA"]}, "'finetune.tasks.t.modalities' lists 'FA'"),
    ({"cohort": "scz", "sources": ["T1w"], "modalities": ["T1w"]},
     "'T1w' is both a target modality and a source"),
    ({"cohort": "scz", "conditions": ["iq"]}, "'finetune.tasks.t.conditions' has 'iq'"),
    ({"cohort": "scz", "split": "train"}, "'finetune.tasks.t.split' is 'train', which needs"),
    ({"cohort": "scz", "sites": ["z"]}, "'finetune.tasks.t.sites' lists 'z'"),
    ({"cohort": "scz", "train": {"preset": "L/256"}}, "'finetune.tasks.t.train' sets 'preset'"),
    ({"cohort": "scz", "init": "/nowhere/model.pt"},
     ("/nowhere/model.pt: init checkpoint not found (config key 'finetune.tasks.t.init')")),
    ({"cohort": "scz", "train": {"label_tokens": True}},
     "'finetune.tasks.t': train key 'label_tokens' is true but the task conditions on neither"),
])
def test_plan_mistakes_are_one_line(task, message):
    with pytest.raises(GenbrainInputError) as err:
        plan({"t": task})
    assert message in one_line(err)


def test_plan_checks_the_sites_and_scores_and_the_init(tmp_path):
    with pytest.raises(GenbrainInputError) as err:  # one diagnosis level at a site
        plan({"t": {"cohort": "scz", "conditions": ["diagnosis"], "per_site": True}},
             {"scz": cohort(n_per_level=(6, 0))})
    assert "site 'a' has 0 'SCZ' participant(s) (levels present: ['CN'])" in one_line(err)
    with pytest.raises(GenbrainInputError) as err:  # a 3:1:1 split needs 5 per level
        plan({"t": {"cohort": "scz", "conditions": ["diagnosis"], "split": "train"}},
             {"scz": cohort(n_per_level=(6, 4))})
    assert "needs at least 5 of each" in one_line(err)
    with pytest.raises(GenbrainInputError) as err:  # a missing score
        plan({"t": {"cohort": "scz", "conditions": ["severity"]}},
             {"scz": cohort(scores="missing")})
    assert "participant sub-aCN2 (sites ['a', 'b']) has no 'severity' value" in one_line(err)
    with pytest.raises(GenbrainInputError) as err:  # no pretraining cohort to start from
        plan({"t": {"cohort": "scz"}}, pretrain=None)
    assert "'finetune.tasks.t.init' is 'pretrain' but no cohort has role" in one_line(err)
    fake = tmp_path / "model.pt"
    fake.write_text("not a checkpoint")
    with pytest.raises(GenbrainInputError) as err:
        plan({"t": {"cohort": "scz", "init": str(fake)}})
    assert f"{fake}: not a PyTorch checkpoint" in one_line(err)


@pytest.mark.parametrize("record, message", [
    ({"model": {}, "step": 0, "config": {}}, "its pickle lacks ['ema']"),
    ({"model": torch.zeros(2), "ema": {}, "step": 0, "config": {}},
     "its 'model' is not a state dict"),
    # the fine-tune reads the init model's architecture, training settings and age scaling
    ({"model": {}, "ema": {}, "step": 0, "config": argparse.Namespace(lr=1e-4)},
     "its 'config' is not a dict"),
    ({"model": {}, "ema": {}, "step": 0, "config": {"model": {}, "norms": {}}},
     "its 'config' lacks ['train', 'norms.age']"),
])
def test_plan_refuses_an_init_checkpoint_the_fine_tune_could_not_start_from(tmp_path, record,
                                                                            message):
    """Read at parse time from the pickle alone: one line naming the file and the key, where
    the fine-tune would otherwise stop (with a traceback) after preprocessing."""
    path = tmp_path / "init.pt"
    torch.save(record, path)
    with pytest.raises(GenbrainInputError) as err:
        plan({"t": {"cohort": "scz", "init": str(path)}})
    assert one_line(err) == (f"{path}: not a genbrain training checkpoint (config key "
                             f"'finetune.tasks.t.init'): {message}")


def test_plan_accepts_a_trained_checkpoint_as_init(pretrained):
    assert plan({"t": {"cohort": "scz", "init": str(pretrained)}})["t/all"].init == \
        str(pretrained)


def test_a_pooled_task_needs_each_level_in_its_pooled_data_a_per_site_one_at_each_site():
    c = cohort()
    bd = c.table[c.table["site"] == "a"].head(3)
    c.table = pd.concat([c.table, bd.assign(diagnosis="BD",
                                            participant_id=bd["participant_id"] + "BD")])
    c.spec = {**c.spec, "diagnosis_levels": ["CN", "SCZ", "BD"]}
    task = {"cohort": "scz", "conditions": ["diagnosis"]}
    jobs = plan({"dx": task}, {"scz": c})  # site b has no BD; the pooled data hold 3
    assert jobs["dx/all"].sites == ("a", "b")
    assert jobs["dx/all"].diagnosis_levels == ("CN", "SCZ", "BD")
    with pytest.raises(GenbrainInputError) as err:
        plan({"dx": {**task, "per_site": True}}, {"scz": c})
    assert "site 'b' has 0 'BD' participant(s) (levels present: ['CN', 'SCZ'])" in one_line(err)
    c.table = c.table.iloc[:-2]  # one BD left
    with pytest.raises(GenbrainInputError) as err:
        plan({"dx": task}, {"scz": c})
    assert ("sites ['a', 'b'] together have 1 'BD' participant(s)" in one_line(err)
            and f"needs at least {MIN_PER_LEVEL} of each" in one_line(err))


def test_training_table_keeps_the_sites_and_the_train_split():
    c = cohort()
    j = job(sites=("a",), split="train")
    split = c.table.assign(split=["train", "validation", "test"] * (len(c.table) // 3))
    t = training_table(j, c.table, split)
    assert set(t["site"]) == {"a"} and set(t["split"]) == {"train"}
    assert set(t["participant_id"]) == set(split.loc[(split["site"] == "a")
                                                     & (split["split"] == "train"),
                                                     "participant_id"])
    assert len(training_table(job(sites=("a", "b")), c.table, None)) == len(c.table)


def test_a_changed_init_checkpoint_retrains_instead_of_resuming(tmp_path, pretrained):
    """The workflow reruns a fine-tune when its init model changed; the old work folder must
    not be resumed into the output (it would be the stale fine-tune)."""
    store = effect_store(tmp_path / "s", diagnosis=True)
    steps = {**job().train, "steps": 4, "checkpoint_every": 2}
    first, _ = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ"), train=steps)
    other = tmp_path / "other.pt"
    ckpt = torch.load(pretrained, weights_only=True)
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v
                     for k, v in ckpt["model"].items()}
    torch.save(ckpt, other)
    j = job(diagnosis_levels=("CN", "SCZ"), train=steps)
    again = run_finetune(j, store, tmp_path / "training.tsv", other, tmp_path / "work",
                         tmp_path / "again.pt", seed=1)
    a, b = read_checkpoint(first), read_checkpoint(again)
    assert b["config"]["meta"]["init_sha256"] != a["config"]["meta"]["init_sha256"]
    assert not torch.equal(a["model"]["blocks.0.attn.qkv.weight"],
                           b["model"]["blocks.0.attn.qkv.weight"])
    assert len(b["losses"]) == 4  # trained afresh from step 1, not resumed at step 4


def test_changed_images_of_the_same_participants_retrain_instead_of_resuming(tmp_path,
                                                                          pretrained):
    """A site re-simulated or re-preprocessed keeps its participant ids: the fine-tune the
    workflow reruns must not resume the work folder trained on the old images."""
    store = effect_store(tmp_path / "s", diagnosis=True)
    steps = {**job().train, "steps": 4, "checkpoint_every": 2}
    first, training = tune(tmp_path, store, pretrained, diagnosis_levels=("CN", "SCZ"),
                           train=steps)
    redone = effect_store(tmp_path / "s2", diagnosis=True, seed=8)  # same ids, other images
    assert (ImageStore(redone).table["participant_id"]
            == ImageStore(store).table["participant_id"]).all()
    assert ImageStore(redone).sha256() != ImageStore(store).sha256()
    j = job(diagnosis_levels=("CN", "SCZ"), train=steps)
    again = run_finetune(j, redone, training, pretrained, tmp_path / "work",
                         tmp_path / "again.pt", seed=1)
    a, b = read_checkpoint(first), read_checkpoint(again)
    assert a["config"]["meta"]["training_participants"] == \
        b["config"]["meta"]["training_participants"]
    assert b["config"]["meta"]["training_sha256"] == ImageStore(redone).sha256()
    assert len(b["losses"]) == 4  # trained afresh from step 1, not resumed at step 4
    # the same store again resumes: the finished run is returned as it is
    same = run_finetune(j, redone, training, pretrained, tmp_path / "work",
                        tmp_path / "same.pt", seed=1)
    assert torch.equal(read_checkpoint(same)["model"]["blocks.0.attn.qkv.weight"],
                       b["model"]["blocks.0.attn.qkv.weight"])


def test_the_default_targets_leave_out_the_sources():
    jobs = plan({"enh": {"cohort": "scz", "sources": ["T1w"], "demographics": False}})
    assert jobs["enh/all"].modalities == ("VBM",) and jobs["enh/all"].sources == ("T1w",)
    with pytest.raises(GenbrainInputError, match="every modality of cohort 'scz' is a source"):
        plan({"enh": {"cohort": "scz", "sources": ["T1w", "VBM"]}})


def test_a_train_split_checks_every_site_of_the_cohort_at_parse_time():
    c = cohort(sites=("a", "b"))
    c.table = pd.concat([c.table[c.table["site"] == "a"],
                         c.table[(c.table["site"] == "b") & (c.table["diagnosis"] == "CN")]])
    with pytest.raises(GenbrainInputError) as err:  # site b (not trained on) has one class
        plan({"dx": {"cohort": "scz", "conditions": ["diagnosis"], "sites": ["a"],
                     "split": "train"}}, {"scz": c})
    assert ("'finetune.tasks.dx.split' is 'train', but the cohort's 3:1:1 split fails"
            in one_line(err)) and "site 'b' has one class only" in one_line(err)


def test_a_score_conditioned_task_trains_on_the_cohorts_score_split():
    """A task conditioned on a score only (the clinical fine-tune) with split 'train' trains on
    the cohort's split stratified by that score (train/val/test over all participants, the
    regressor's), which the split rule writes; a second task on another basis is refused."""
    from genbrain.splits import SplitBasis, cohort_split, split_basis

    c = cohort(sites=("a", "b"))
    c.spec = {**c.spec, "diagnosis_levels": None, "scores": [{"name": "severity",
                                                             "range": [0, 10]}]}
    c.table = c.table.assign(diagnosis="stroke")
    jobs = plan({"clin": {"cohort": "scz", "conditions": ["severity"], "split": "train"}},
                {"scz": c})
    job = jobs["clin/all"]
    basis = split_basis("scz", c.spec, jobs)
    assert basis == SplitBasis(score="severity", score_max=10.0)
    table = cohort_split(c.table, None, 3, "c", "severity", 10.0)
    assert list(table.columns) == ["participant_id", "site", "diagnosis", "severity", "split"]
    assert table["split"].value_counts().to_dict() == {"train": 14, "val": 5, "test": 5}
    pd.testing.assert_frame_equal(table, basis.split(c.table.iloc[::-1], 3, "c"))
    train = training_table(job, c.table, table)
    assert set(train["participant_id"]) == set(table.loc[table["split"] == "train",
                                                         "participant_id"])
    c2 = cohort(sites=("a", "b"))
    with pytest.raises(GenbrainInputError) as err:  # one split per cohort
        plan({"dx": {"cohort": "scz", "conditions": ["diagnosis"], "split": "train"},
              "clin": {"cohort": "scz", "conditions": ["severity"], "split": "train"}},
             {"scz": c2})
    assert ("'finetune.tasks.clin.split' is 'train' by score 'severity', but task 'dx' trains "
            "on cohort 'scz's split by diagnosis ['CN', 'SCZ']") in one_line(err)
    few = cohort(n_per_level=(3, 3), sites=("a", "b"))
    few.spec = c.spec
    with pytest.raises(GenbrainInputError) as err:  # 12 < 15 participants
        plan({"clin": {"cohort": "scz", "conditions": ["severity"], "split": "train"}},
             {"scz": few})
    assert "3:1:1 split fails" in one_line(err) and "at least 15" in one_line(err)


def test_plan_says_the_init_checkpoints_layout_and_the_conversion(tmp_path, caplog,
                                                                   monkeypatch):
    """An imported public checkpoint as ``init``: the plan logs its layout and that the stores
    will be converted to it; one of ours says no conversion; a layout whose mask is gone
    fails at parse time, naming the key."""
    from genbrain.layout import PUBLIC, VoxelLayout, public_layout, standard_layout

    monkeypatch.delenv("FSLDIR", raising=False)

    def fake(name, config):  # a checkpoint's pickle as the plan peeks at it (no weights)
        path = tmp_path / name
        config = {"train": {}, "norms": {"age": {"mean": 60.0, "std": 10.0}}, **config}
        torch.save({"model": {}, "ema": {}, "step": 0, "config": config}, path)
        return str(path)

    caplog.set_level("INFO", logger="genbrain.finetune")
    pub = fake("imported.pt", {"layout": public_layout().to_dict(),
                               "model": {"n_voxels": 228_453}, "public_import": {"dialect": "x"}})
    jobs = plan({"t": {"cohort": "scz", "init": pub}})
    assert jobs["t/all"].init == pub
    assert (f"config key 'finetune.tasks.t.init': {pub} (imported from the public GenBrain "
            f"code) has layout {PUBLIC} (228,453 voxels") in caplog.text
    assert ("the stores' fsl-brain-mask vectors (228,483) will be converted to it for "
            "fine-tuning, and its samples back to fsl-brain-mask for synthesis") in caplog.text
    caplog.clear()
    ours = fake("ours.pt", {"layout": standard_layout().to_dict(),
                            "model": {"n_voxels": 228_483}})
    plan({"t": {"cohort": "scz", "init": ours}})
    assert f"{ours} has layout fsl-brain-mask (228483 voxels): the stores' vectors reach it " \
        "unconverted" in caplog.text
    gone = VoxelLayout("custom:gone.nii.gz", str(tmp_path / "gone.nii.gz"),
                       public_layout().mask).to_dict()
    bad = fake("gone.pt", {"layout": gone, "model": {"n_voxels": 228_453}})
    with pytest.raises(GenbrainInputError) as err:
        plan({"t": {"cohort": "scz", "init": bad}})
    assert one_line(err).endswith("is not found (config key 'finetune.tasks.t.init')")
