"""CUDA-only checks (marker ``gpu``; skipped with the reason where CUDA is not available):
bf16 training of a small preset and its resume (exact losses, weights to float rounding), DDIM sampling in bf16 at the brain's
size with compiled blocks against eager, and DistributedDataParallel on one GPU.

The trainer's defaults on CUDA are under test: ``precision: auto`` (bf16 autocast) and
``compile: null`` (the DiT blocks through torch.compile). ``benchmarks/gpu_check.sh`` runs this
file on a GPU machine."""

import copy
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genbrain.sampling import SamplingConfig, sample_table
from genbrain.training.checkpoints import load_for_sampling
from genbrain.training.config import TrainConfig
from genbrain.training.loop import train
from tests.unit.test_sampling import REG, covariates
from tests.unit.training.test_loop import GradRecorder, _free_port, config, make_store, state

pytestmark = pytest.mark.gpu

V_BRAIN = 228_483  # voxels of the 2 mm MNI brain mask: 893 tokens of 256
# cuBLAS is deterministic with a fixed workspace; read when CUDA first creates a handle
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def small(**changes) -> TrainConfig:
    """The tiny preset at its own patch size (256) on brain-sized images."""
    return config(**{"preset": "tiny/256", "patch_size": None, "steps": 6, "global_batch": 4,
                     "checkpoint_every": 3, **changes})


def _deterministic(on: bool) -> None:
    """Deterministic kernels (flash-attention and cuDNN backward without atomic adds); an op
    without a deterministic version warns rather than fails."""
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on


@pytest.fixture(scope="module", autouse=True)
def _deterministic_module():
    _deterministic(True)
    yield
    _deterministic(False)


@pytest.fixture(scope="module")
def brain_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("gpu") / "s", n=8, v=V_BRAIN)


@pytest.fixture(scope="module")
def whole_run(brain_store, tmp_path_factory):
    """Six steps straight, and the gradients of the first."""
    with GradRecorder() as grads:
        result = train(small(), brain_store, tmp_path_factory.mktemp("whole"))
    return result, grads.steps[0]


def _differences(a: dict, b: dict) -> dict[str, float]:
    return {k: (a[k].float() - b[k].float()).abs().max().item() for k in a
            if not torch.equal(a[k], b[k])}


def test_bf16_compiled_training_resumes_on_cuda_to_float_rounding(brain_store, whole_run, tmp_path):
    whole, _ = whole_run
    assert np.isfinite(whole.losses).all() and len(whole.losses) == 6
    train(small(steps=3), brain_store, tmp_path / "cut")  # stops at step 3 ...
    resumed = train(small(), brain_store, tmp_path / "cut")  # ... and goes on to 6
    # losses and weights: equal to float rounding, as genbrain/training/loop.py documents for CUDA.
    # Bitwise is out of reach: cuDNN's attention backward accumulates with atomic adds even in
    # deterministic mode (it warns), and AdamW amplifies a rounding difference in a gradient
    # into up to a few % of one step's update (lr). Measured on an H200, 2026-12-04, three
    # runs: losses equal or 6e-8 apart; weights 1.1e-6 to 2.2e-5 apart (lr 1e-3, 3 steps). A
    # resume that lost state (optimizer moments, RNG, data order) would move many weights by a
    # sizeable fraction of lr: the CPU tests (training/test_loop.py) check resume bitwise.
    assert resumed.step == 6
    np.testing.assert_allclose(resumed.losses, whole.losses[3:], rtol=1e-5)
    lr = small().lr
    for key in ("model", "ema"):
        diffs = _differences(state(resumed.checkpoint, key), state(whole.checkpoint, key))
        worst = max(diffs.values(), default=0.0)
        assert worst < 0.1 * lr, f"{key}: the resumed run differs from the straight one: {diffs}"
    # the checkpoint holds an eager model's keys (no _orig_mod. prefix) and loads into one
    model = load_for_sampling(whole.checkpoint)[0]
    assert list(state(whole.checkpoint)) == list(model.state_dict())
    # compiled vs eager training: the same losses to bf16 rounding
    eager = train(small(steps=3, compile=False), brain_store, tmp_path / "eager")
    np.testing.assert_allclose(whole.losses[:3], eager.losses, rtol=2e-2)


def test_ddim_bf16_sampling_on_cuda_and_compiled_blocks_match_eager(whole_run, caplog):
    whole, _ = whole_run
    model, norms, cfg = load_for_sampling(whole.checkpoint, device="cuda")
    eager = copy.deepcopy(model)
    assert model.compile_blocks() and model.blocks_compiled  # auto: on with CUDA
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 1, V_BRAIN, device="cuda", generator=g)
    t = torch.tensor([10, 250, 600, 999], device="cuda")
    labels = {"age": torch.linspace(-1, 1, 4, device="cuda"),
              "sex": torch.tensor([0, 1, 0, 1], device="cuda"),
              "modality": torch.tensor([0, 0, 1, 1], device="cuda")}
    with caplog.at_level("WARNING"), torch.no_grad(), \
            torch.autocast("cuda", dtype=torch.bfloat16):
        out, ref = model(x, t, **labels).float(), eager(x, t, **labels).float()
    assert model.blocks_compiled, f"compilation fell back to eager: {caplog.text}"
    scale = ref.abs().max().item()
    assert scale > 0 and out.shape == (4, 2, V_BRAIN)
    # bf16 tolerance: 8 bits of mantissa, rounded at other places by the fused kernels
    assert (out - ref).abs().max().item() <= 5e-2 * scale
    assert (out - ref).abs().mean().item() <= 1e-2 * ref.abs().mean().item()

    table = covariates(4)
    images = {}
    for compiled in (False, True):
        sampling = SamplingConfig(steps=20, guidance=1.2, batch_size=2, seed=3,
                                  precision="bf16", compile=compiled)
        images[compiled] = sample_table(model, norms, cfg, table, sampling, REG, device="cuda")
        assert model.blocks_compiled == compiled
    for im in images.values():
        assert im.shape == (4, V_BRAIN) and np.isfinite(im).all()
    for a, b in zip(images[True], images[False]):
        assert np.corrcoef(a, b)[0, 1] > 0.99
        assert np.abs(a - b).max() <= 5e-2 * np.abs(b).max()


def _ddp_worker(rank: int, port: int, index: str, out_dir: str, cfg: dict) -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _deterministic(True)
    torch.cuda.set_device(0)
    dist.init_process_group("nccl")  # a group of one: the trainer wraps the model in DDP
    try:
        with GradRecorder() as grads:
            result = train(TrainConfig.from_dict(cfg), index, out_dir)
        torch.save({"grads": [g.cpu() for g in grads.steps[0]], "losses": result.losses},
                   Path(out_dir) / "ddp.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_on_one_gpu_matches_the_plain_run(brain_store, whole_run, tmp_path):
    whole, plain_grads = whole_run
    out = tmp_path / "ddp"
    out.mkdir()
    ctx = mp.start_processes(_ddp_worker, args=(_free_port(), str(brain_store), str(out),
                                                small().to_dict()),
                             nprocs=1, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the DDP worker did not finish in 240 s")
    got = torch.load(out / "ddp.pt")
    assert len(got["grads"]) == len(plain_grads)
    for gp, gd in zip(plain_grads, got["grads"]):  # DDP averages over one rank: the same
        torch.testing.assert_close(gd, gp.cpu(), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(got["losses"][0], whole.losses[0], rtol=1e-6)
    np.testing.assert_allclose(got["losses"], whole.losses, rtol=2e-2)
    assert list(state(out / "checkpoint.pt")) == list(state(whole.checkpoint))  # no module.
