"""The trainer: learning, bitwise-exact resume after SIGKILL, gradient accumulation and DDP
equivalence, divergence, bad inputs, atomic checkpoints and fine-tuning freezes.

Models are nano widths with patch 16 on 512-voxel toy stores (with patch 256 the noise MSE of
hidden 64 cannot fall below ~1 - 64/256, so learning would be invisible)."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from torch.optim.optimizer import register_optimizer_step_pre_hook

from genbrain.errors import GenbrainInputError
from genbrain.io import save_tsv
from genbrain.model.diffusion import GaussianDiffusion
from genbrain.store import write_shard
from genbrain.training.checkpoints import load_for_sampling, loss_history
from genbrain.training.config import TrainConfig
from genbrain.training.data import ItemOrder, MicroBatchSampler
from genbrain.training.loop import TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[3]
V = 512



def make_store(root: Path, n: int = 6, v: int = V, *, modality: str = "T1w", index: int = 0,
               seed: int = 0, **columns) -> Path:
    """A one-shard store of n smooth images (a sine wave of random amplitude plus noise)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = np.sin(np.arange(v) / 20.0) * rng.uniform(0.5, 1.5, (n, 1)) + 0.1 * rng.standard_normal(
        (n, v))
    write_shard(x, root / f"{modality}.npy", "float32")
    save_tsv(pd.DataFrame({"participant_id": [f"sub-{seed}x{i}" for i in range(n)], "site": "a",
                           "age": 40.0 + 3 * np.arange(n) + 10 * seed,
                           "sex": (["M", "F"] * n)[:n], "modality": modality,
                           "modality_index": index, "shard": f"{modality}.npy", "row": range(n),
                           **columns}), root / "index.tsv")
    return root / "index.tsv"


def config(**changes) -> TrainConfig:
    base = {"preset": "nano/256", "patch_size": 16, "n_modalities": 2, "steps": 4,
            "global_batch": 4, "lr": 1e-3, "ema_decay": 0.9, "label_dropout": 0.3,
            "checkpoint_every": 1000, "log_every": 1000, "sampling_weights": "model"}
    return TrainConfig(**{**base, **changes})


def state(path: Path, key: str = "model") -> dict:
    return torch.load(path, weights_only=True)[key]


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def assert_states_close(a: dict, b: dict, changed_from: dict) -> None:
    """a == b to 1e-5, and training moved them away from ``changed_from`` by far more."""
    moved = max((a[k] - changed_from[k]).abs().max().item() for k in a)
    assert moved > 1e-3
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], atol=1e-5, rtol=1e-5, msg=k)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


class GradRecorder:
    """Records the gradients every optimizer sees just before each step."""

    def __enter__(self):
        self.steps = []
        self._handle = register_optimizer_step_pre_hook(
            lambda opt, args, kwargs: self.steps.append(
                [p.grad.clone() for g in opt.param_groups for p in g["params"]]))
        return self

    def __exit__(self, *exc):
        self._handle.remove()


# --------------------------------------------------------------------------------------------


def test_loss_goes_down_and_progress_is_logged(tmp_path, caplog):
    index = make_store(tmp_path / "s", n=8)
    cfg = config(steps=60, global_batch=8, label_dropout=0.1, log_every=30)
    with caplog.at_level("INFO", logger="genbrain.training.loop"):
        result = train(cfg, index, tmp_path / "run")
    assert result.step == 60 and len(result.losses) == 60
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:10])
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert len(lines) == 2 and lines[-1].startswith("step 60/60  loss ")
    assert "ETA 0:00:00" in lines[-1]

    # Noise prediction on fixed (t, noise) improved well below the untrained model's MSE of 1.
    model, norms, got_cfg = load_for_sampling(result.checkpoint)
    assert got_cfg == cfg and not model.training
    assert norms["age"] == pytest.approx({"mean": 50.5, "std": np.std(40.0 + 3 * np.arange(8))})
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(np.load(tmp_path / "s" / "T1w.npy")).unsqueeze(1)  # (8, 1, V)
    t = torch.tensor([50, 200, 400, 600, 800, 950, 300, 700])
    lab = {"age": torch.zeros(8), "sex": torch.zeros(8, dtype=torch.long),
           "modality": torch.zeros(8, dtype=torch.long)}
    with torch.no_grad():
        mse = GaussianDiffusion.linear().training_losses(
            lambda xt, tm: model(xt, tm, **lab), x, t, noise=torch.randn(x.shape, generator=g))
    assert mse["mse"].mean() < 0.4


def test_item_order_is_a_seeded_stream_of_epoch_permutations():
    order = ItemOrder(6, seed=3)
    stream = torch.cat([order.permutation(0), order.permutation(1)])
    assert sorted(order.permutation(1).tolist()) == list(range(6))
    assert not torch.equal(order.permutation(0), ItemOrder(6, seed=4).permutation(0))
    assert torch.equal(order.take((0, 4), 4), stream[4:8])  # a batch straddles two epochs
    assert order.advance((0, 4), 4) == (1, 2)
    # Two ranks' micro-batches tile each global batch: [r0 m0, r0 m1, r1 m0, r1 m1] per step.
    ranks = [iter(MicroBatchSampler(ItemOrder(6, 3), (0, 4), 4, 1, r, 2)) for r in range(2)]
    first_step = [next(ranks[0]), next(ranks[0]), next(ranks[1]), next(ranks[1])]
    assert [i for micro in first_step for i in micro] == stream[4:8].tolist()


KILLED_RUN = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from genbrain.training.config import TrainConfig
from genbrain.training.loop import train
def die(step, path):
    if step == 6:
        os.kill(os.getpid(), signal.SIGKILL)
train(TrainConfig.from_dict(json.loads(sys.argv[3])), sys.argv[1], sys.argv[2], on_checkpoint=die)
"""


@pytest.mark.parametrize("variant", [{}, {"prediction": "v", "modality_templates": True}],
                         ids=["paper", "v-templates"])
def test_resume_after_sigkill_is_bitwise_exact(tmp_path, variant):
    # 6 images and batches of 4 (2 micro-batches of 2): batches straddle epochs.
    index = make_store(tmp_path / "s", n=6)
    cfg = config(steps=12, micro_batch=2, checkpoint_every=3, label_dropout=0.5, **variant)
    whole = train(cfg, index, tmp_path / "whole")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(index), str(tmp_path / "cut"),
                           json.dumps(cfg.to_dict())], cwd=ROOT, env=env, timeout=120,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 6

    resumed = train(cfg, index, tmp_path / "cut")
    assert resumed.step == 12 and resumed.losses == whole.losses[6:]
    # the checkpoint's loss history runs across the kill as one curve
    assert loss_history(resumed.checkpoint).tolist() == whole.losses
    for key in ("model", "ema"):
        assert_states_equal(state(resumed.checkpoint, key), state(whole.checkpoint, key))
    assert not torch.equal(state(whole.checkpoint, "ema")["blocks.0.attn.qkv.weight"],
                           state(whole.checkpoint)["blocks.0.attn.qkv.weight"])
    # Nothing left to do: a rerun returns at once and leaves the checkpoint as it is.
    before = whole.checkpoint.read_bytes()
    assert train(cfg, index, tmp_path / "whole").losses == []
    assert whole.checkpoint.read_bytes() == before


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    index = make_store(tmp_path / "s", n=6)
    with GradRecorder() as whole:
        a = train(config(steps=3), index, tmp_path / "a")
    with GradRecorder() as accumulated:
        b = train(config(steps=3, micro_batch=2), index, tmp_path / "b")
    # Adam hides a wrong gradient scale, so compare the gradients themselves too.
    for ga, gb in zip(whole.steps[0], accumulated.steps[0]):
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    init = state(tmp_path / "a" / "checkpoint.pt", "ema")  # ema decay 0.9: near the start
    assert_states_close(state(a.checkpoint), state(b.checkpoint), changed_from=init)


def _ddp_worker(rank: int, world: int, port: int, index: str, out_dir: str, cfg: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with GradRecorder() as grads:
        train(TrainConfig.from_dict(cfg), index, out_dir)
    torch.save(grads.steps[0], Path(out_dir) / f"grads-rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(tmp_path):
    index = make_store(tmp_path / "s", n=6)
    cfg = config(steps=3)
    with GradRecorder() as single:
        one = train(cfg, index, tmp_path / "one")
    out = tmp_path / "ddp"
    out.mkdir()
    ctx = mp.start_processes(_ddp_worker, args=(2, _free_port(), str(index), str(out),
                                                cfg.to_dict()),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish in 90 s")
    for rank in range(2):  # the same averaged gradient on every rank, equal to one process's
        for g1, gd in zip(single.steps[0], torch.load(out / f"grads-rank{rank}.pt")):
            torch.testing.assert_close(g1, gd, atol=1e-6, rtol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "grads-rank0.pt",
                                                     "grads-rank1.pt"]
    init = state(one.checkpoint, "ema")
    assert_states_close(state(out / "checkpoint.pt"), state(one.checkpoint), changed_from=init)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    index = make_store(tmp_path / "s", n=6)
    run = tmp_path / "run"
    train(config(steps=2, checkpoint_every=1), index, run)
    kept = (run / "checkpoint.pt").read_bytes()
    write_shard(np.full((6, V), np.inf, np.float32), tmp_path / "s" / "T1w.npy", "float32")
    with pytest.raises(TrainingDiverged) as err:
        train(config(steps=4, checkpoint_every=1), index, run)
    msg = one_line(err)
    assert "at step 3" in msg and f"{run / 'checkpoint.pt'} (step 2) is unchanged" in msg
    assert (run / "checkpoint.pt").read_bytes() == kept
    assert os.listdir(run) == ["checkpoint.pt"]


def test_bad_inputs_give_one_line_errors(tmp_path):
    small = make_store(tmp_path / "small", v=256, seed=1)
    index = make_store(tmp_path / "s")
    with pytest.raises(GenbrainInputError) as err:  # two stores disagree on V
        train(config(), [index, small], tmp_path / "a")
    assert one_line(err) == (f"{small}: images have 256 voxels but the model (built for the "
                             "first store) expects 512")

    pre = train(config(steps=1), index, tmp_path / "pre").checkpoint
    with pytest.raises(GenbrainInputError) as err:  # fine-tuning on another voxel count
        train(config(), small, tmp_path / "b", init_checkpoint=pre)
    assert one_line(err) == (f"{small}: images have 256 voxels but the init checkpoint {pre} "
                             "expects 512")

    with pytest.raises(GenbrainInputError) as err:  # resuming another preset's run
        train(config(steps=2, preset="tiny/256"), index, tmp_path / "pre")
    assert one_line(err).startswith(f"{pre}: cannot resume: training config key 'preset' is "
                                    "'nano/256' in the checkpoint but 'tiny/256' in this run")

    far = make_store(tmp_path / "far", modality="ADC", index=5, seed=2)
    with pytest.raises(GenbrainInputError) as err:  # a modality beyond the table
        train(config(), far, tmp_path / "c")
    assert one_line(err).startswith(f"{far}: modality 'ADC' has index 5 but the model's "
                                    "modality table holds 2 (indices 0..1)")

    odd = make_store(tmp_path / "odd", seed=3, sex=["M", "X", "F", "F", "M", "F"])
    with pytest.raises(GenbrainInputError, match=r"sub-3x1 \(T1w\): sex 'X' is not one of M, F"):
        train(config(), odd, tmp_path / "d")
    with pytest.raises(GenbrainInputError, match="micro_batch 3 does not divide"):
        train(config(micro_batch=3), index, tmp_path / "e")
    with pytest.raises(GenbrainInputError, match="'finetune' is 'some'"):
        config(finetune="some")
    with pytest.raises(GenbrainInputError, match="unknown key 'lr_max'"):
        TrainConfig.from_dict({"lr_max": 1.0})
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    index = make_store(tmp_path / "s")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".checkpoint.stale1234.pt").write_bytes(b"half a checkpoint from a killed write")
    train(config(steps=3, checkpoint_every=1), index, run)
    assert os.listdir(run) == ["checkpoint.pt"]  # the stale temporary file was cleared too
    kept = (run / "checkpoint.pt").read_bytes()

    def dies_mid_write(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError, match="disk full"):
        train(config(steps=4, checkpoint_every=1), index, run)
    assert (run / "checkpoint.pt").read_bytes() == kept and os.listdir(run) == ["checkpoint.pt"]


@pytest.mark.parametrize("mode", ["new-modules-only", "last-k-blocks"])
def test_finetune_freezes_pretrained_weights(tmp_path, mode):
    pre = train(config(steps=3), make_store(tmp_path / "pre"), tmp_path / "pre_run").checkpoint
    # A new site with a new modality (index 2) and a diagnosis; older participants.
    new = make_store(tmp_path / "new", modality="ADC", index=2, seed=3,
                     diagnosis=["CN", "SCZ"] * 3)
    cfg = config(steps=3, lr=1e-2, finetune=mode, finetune_k=1, diagnosis_levels=["CN", "SCZ"])
    tuned = train(cfg, new, tmp_path / "tuned", init_checkpoint=pre,
                  surgeries=[("add_disease_head", 2), ("extend_modalities", 1)]).checkpoint

    a, b = state(pre), state(tuned)
    table, new_table = a.pop("modality_embedder.weight"), b.pop("modality_embedder.weight")
    assert torch.equal(new_table[[0, 1, 3]], table)  # pretrained rows and the null row kept
    assert new_table[2].abs().min() > 0  # the new modality's row, zero at surgery, learned
    assert b.pop("disease_embedder.weight").abs().min() > 0
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    if mode == "new-modules-only":
        assert changed == set()
    else:  # nano has 2 blocks: the last one and the final layer train
        assert changed and all(k.startswith(("blocks.1.", "final_layer.")) for k in changed)
        assert "final_layer.linear.weight" in changed and "blocks.1.mlp.fc1.weight" in changed
    # the pretrained age scaling is inherited, so age 50 means the same to both models
    assert (torch.load(tuned, weights_only=True)["config"]["norms"]["age"]
            == torch.load(pre, weights_only=True)["config"]["norms"]["age"])
    model, _, _ = load_for_sampling(tuned, weights="ema")
    assert model.disease_embedder.num_embeddings == 3 and model.spec()["n_modalities"] == 3


def test_score_head_learns_a_standardised_score(tmp_path):
    pre = train(config(steps=2), make_store(tmp_path / "pre"), tmp_path / "pre_run").checkpoint
    clinical = make_store(tmp_path / "clin", seed=4, nihss=[2.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    cfg = config(steps=2, score_column="nihss")
    tuned = train(cfg, clinical, tmp_path / "tuned", init_checkpoint=pre,
                  surgeries=["add_score_head"]).checkpoint
    model, norms, _ = load_for_sampling(tuned)
    assert norms["score"] == pytest.approx({"mean": 7.0, "std": np.std([2, 4, 6, 8, 10, 12])})
    assert model.score_embedder.mlp[2].weight.abs().sum() > 0  # zero at surgery, trained
    # what it saw: its own ages (80-95) widened by the pretrained model's (40-55), its scores
    assert torch.load(tuned, weights_only=True)["config"]["ranges"] == {
        "age": {"min": 40.0, "max": 95.0}, "score": {"min": 2.0, "max": 12.0}}
    # the surgery the task implies is added without being named: the same run, bitwise
    implied = train(cfg, clinical, tmp_path / "implied", init_checkpoint=pre).checkpoint
    assert torch.load(implied, weights_only=True)["config"]["surgeries"] == [["add_score_head"]]
    a, b = state(tuned), state(implied)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batched_fetch_equals_item_by_item_fetch(tmp_path):
    from genbrain.store import ImageStore
    from genbrain.training.data import VoxelDataset

    stores = [ImageStore(make_store(tmp_path / "a", 5, seed=0)),
              ImageStore(make_store(tmp_path / "b", 4, seed=1, index=1))]
    data = VoxelDataset(stores)
    idx = [7, 0, 3, 8, 3]
    batch = data.__getitems__(idx)
    items = [data[i] for i in idx]
    assert batch["x"].shape == (5, 1, V)
    for key, value in batch.items():
        torch.testing.assert_close(value, torch.stack([it[key] for it in items]), rtol=0, atol=0)


def test_modality_templates_are_the_mean_training_images(tmp_path):
    a = make_store(tmp_path / "a", n=6, modality="T1w", index=0)
    b = make_store(tmp_path / "b", n=5, modality="VBM", index=1, seed=1)
    cfg = config(steps=1, modality_templates=True, template_images=3)
    result = train(cfg, [a, b], tmp_path / "run")
    tmpl = state(result.checkpoint)["modality_templates"]  # (n_modalities + 1, V)
    assert tmpl.shape == (3, V) and torch.count_nonzero(tmpl[2]) == 0  # null row stays 0
    for row, index, rows in ((0, a, [0, 2, 5]), (1, b, [0, 2, 4])):  # 3 evenly spread images
        x = np.load(index.parent / ("T1w.npy" if row == 0 else "VBM.npy")).astype(np.float64)
        np.testing.assert_allclose(tmpl[row].numpy(), x[rows].mean(0), rtol=1e-6, atol=1e-6)
    # the sampler's model carries them (EMA copy included)
    model, _, got = load_for_sampling(result.checkpoint, weights="ema")
    assert got.modality_templates and torch.equal(model.modality_templates, tmpl)
    with pytest.raises(GenbrainInputError, match="'template_images' is 0; expected an integer"):
        config(template_images=0)


def test_precision_auto_is_fp32_on_cpu_and_bf16_autocasts(tmp_path):
    index = make_store(tmp_path / "s", n=4)
    runs = {p: train(config(steps=3, precision=p), index, tmp_path / p)
            for p in ("auto", "fp32", "bf16")}
    assert_states_equal(state(runs["auto"].checkpoint), state(runs["fp32"].checkpoint))
    bf16, fp32 = state(runs["bf16"].checkpoint), state(runs["fp32"].checkpoint)
    assert np.isfinite(runs["bf16"].losses).all()
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32)  # bf16 arithmetic was used
    assert max((bf16[k] - fp32[k]).abs().max().item() for k in fp32) < 0.05  # ... and close
    with pytest.raises(GenbrainInputError, match="'precision' is 'fp16'; expected one of auto"):
        config(precision="fp16")


def test_compile_matches_eager_keeps_checkpoint_keys_and_may_change_on_resume(tmp_path, caplog):
    index = make_store(tmp_path / "s", n=4)
    with GradRecorder() as eager:
        a = train(config(steps=2, compile=False), index, tmp_path / "eager")
    with GradRecorder() as compiled, caplog.at_level("WARNING"):
        b = train(config(steps=2, compile=True), index, tmp_path / "compiled")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for key in ("model", "ema"):  # the same keys as eager: no _orig_mod. prefix
        assert list(state(b.checkpoint, key)) == list(state(a.checkpoint, key))
    if warned:  # compilation failed here: one warning, then exactly the eager run
        assert len(warned) == 1 and "running them eager" in warned[0]
        assert_states_equal(state(b.checkpoint), state(a.checkpoint))
    for ga, gb in zip(eager.steps[0], compiled.steps[0]):  # step 1: the same weights
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-5)
    # compile changes rounding only: a resumed run may switch it (null = off on CPU)
    assert train(config(steps=3, compile=None), index, tmp_path / "compiled").step == 3
    with pytest.raises(GenbrainInputError, match="'compile' is 'yes'; expected true, false"):
        config(compile="yes")
