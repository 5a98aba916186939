"""Train-step time of the genbrain DiT against the public code's DiT, on CPU or CUDA (MFU).

The public code's DiT is built from timm's Attention/Mlp. Besides the times, the script prints
the analytic FLOPs per image, the achieved TFLOP/s and, on CUDA, the MFU.

One step = forward + IDDPM hybrid loss + backward + AdamW step (lr 1e-4, no weight decay), full
V = 228,483 voxels (T = 893 tokens of 256), one fixed batch. As the trainer runs
(``genbrain.training.loop``, ``precision: auto``): on CPU fp32; on CUDA the model calls under
bf16 autocast, float32 matmuls in TF32 and fused AdamW.

- baseline: ``benchmarks/_public_dit.py``: facebookresearch/DiT's ``models.py`` with a Conv1d
  patch embedder and timm's ``Attention``/``Mlp`` (copied verbatim from timm 1.0.31, which
  cannot be installed beside our CPU torch; see that file), attention on the explicit
  ``softmax(q k^T) v`` path that the public code's timm (0.6) ran, i.e. ``TIMM_FUSED_ATTN=0``;
- ours: :class:`genbrain.model.dit.DiT`;
- for reference only: the same baseline with timm >= 0.9's default fused attention.

The baseline gets the genbrain model's weights (perturbed away from the zero init), so before
timing the script checks that both compute the same loss and gradients (in float32, on the
batch's first 4 images). The loss is genbrain's ``GaussianDiffusion.training_losses`` for both
(improved-diffusion's maths). Models are timed one step at a time in interleaved rounds (order
reversed every other round, as machines are shared and noisy); prints each model's median
seconds per step, images/s, achieved TFLOP/s (training = 3 x the analytic forward FLOPs of
:func:`genbrain.model.dit.forward_flops`, the same for every model) and on CUDA the MFU against
a bf16 matmul peak measured in this process (``--peak`` overrides it), and the ratio of medians
with the range of the per-round ratios. A model that runs out of GPU memory is left out with a
line saying so. ``--compile`` then times every model again with each DiT block through
``torch.compile`` (the trainer's default on CUDA; ``dynamic=False``, compile time printed).

``--large`` adds the paper preset L/256 (depth 24, hidden 1024, ~460M parameters), forward pass
only (no_grad, batch 1): a train step of it does not fit a CPU benchmark (on CUDA, time its
train step with ``--configs L/256:32``).

    .venv/bin/python benchmarks/train_step.py [--configs tiny/256:4,S/256:2] [--rounds 5]
        [--large] [--large-rounds 3] [--device cpu]
    python3 benchmarks/train_step.py --device cuda [--configs L/256:32] [--compile] [--peak P]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mfu import autocast, device_of, flops_line, header, rate, sync, tf32
from _public_dit import perturb_, public_dit

from genbrain.model.diffusion import GaussianDiffusion
from genbrain.model.dit import TRAIN_FLOPS_FACTOR, DiT, build_dit

V = 228_483
CHECK_ROWS = 4  # images of the batch the equal-weights check runs on
DEFAULT_CONFIGS = {"cpu": "tiny/256:4,S/256:2", "cuda": "L/256:32"}
NAMES = {"base": "baseline, public DiT + timm Attention/Mlp, explicit attention",
         "ours": "ours, genbrain DiT",
         "fused": "reference: baseline with timm >= 0.9 default fused attention"}


def make_batch(n: int, device: torch.device, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"x": torch.randn(n, 1, V, generator=g), "noise": torch.randn(n, 1, V, generator=g),
             "t": torch.randint(0, 1000, (n,), generator=g),
             "age": torch.randn(n, generator=g), "sex": torch.randint(0, 2, (n,), generator=g),
             "modality": torch.randint(0, 34, (n,), generator=g),
             "drop": torch.arange(n) % 10 == 9}  # label dropout as the trainer passes it
    return {k: v.to(device) for k, v in batch.items()}


def step_fn(model: torch.nn.Module, diffusion: GaussianDiffusion,
            batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    device = batch["x"].device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0,
                            fused=True if device.type == "cuda" else None)  # as the trainer
    labels = {k: batch[k] for k in ("age", "sex", "modality")}

    def model_fn(x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            return model(x_t, t_model, force_drop=batch["drop"], **labels)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = diffusion.training_losses(model_fn, batch["x"], batch["t"],
                                         noise=batch["noise"])["loss"].mean()
        loss.backward()
        opt.step()
        return loss.item()
    return step


def check_same(ours: torch.nn.Module, others: dict[str, torch.nn.Module],
               diffusion: GaussianDiffusion, batch: dict[str, torch.Tensor]) -> str:
    """Loss and gradient of every model at the shared starting weights, float32 (no autocast,
    no TF32); |differences| to ours."""
    batch = {k: v[:CHECK_ROWS] for k, v in batch.items()}
    labels = {k: batch[k] for k in ("age", "sex", "modality")}
    grads, losses = {}, {}
    for name, model in {"ours": ours, **others}.items():
        model.zero_grad(set_to_none=True)
        loss = diffusion.training_losses(
            lambda x, t, m=model: m(x, t, force_drop=batch["drop"], **labels),
            batch["x"], batch["t"], noise=batch["noise"])["loss"].mean()
        loss.backward()
        losses[name] = loss.item()
        grads[name] = torch.cat([p.grad.reshape(-1) for _, p in sorted(
            (k.replace(".embedding_table", ""), p) for k, p in model.named_parameters()
            if p.grad is not None)])
        model.zero_grad(set_to_none=True)
    return "; ".join(
        f"{n}: loss {losses[n]:.6f} vs ours {losses['ours']:.6f}, max |grad diff| "
        f"{(grads[n] - grads['ours']).abs().max().item():.1e} (max |grad| "
        f"{grads['ours'].abs().max().item():.1e})" for n in others)


def interleave(fns: dict[str, Callable[[], object]], rounds: int,
               device: torch.device) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def report(times: dict[str, list[float]], unit: str, n: int, flops: float,
           peak: float | None, suffix: str = "") -> None:
    """Median time, images/s, TFLOP/s (and MFU) per model; ratios to the baseline (the
    explicit-attention public DiT, or the fused one where that was left out)."""
    ref = "base" if "base" in times else "fused"
    base = statistics.median(times[ref]) if ref in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        line = (f"  {NAMES[name]}{suffix}: median {med:.3f} {unit} ({len(ts)} rounds), "
                f"{rate(n / med, flops, peak)}")
        if name != ref and base is not None:
            per_round = sorted(b / o for b, o in zip(times[ref], ts))
            line += (f", ratio {base / med:.2f}x (per round {per_round[0]:.2f}-"
                     f"{per_round[-1]:.2f}x)")
        print(line, flush=True)


def warm_up(fns: dict[str, Callable[[], object]], device: torch.device,
            label: str = "") -> dict[str, Callable[[], object]]:
    """Run each once (allocator, AdamW state; with ``label``, the compile, timed); returns
    those that ran: a model out of GPU memory, or whose compile failed, is left out."""
    kept = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        try:
            fn()
            sync(device)
        except Exception as err:
            oom = isinstance(err, torch.cuda.OutOfMemoryError)
            if not (oom or label):  # a plain run's error is a bug: let it show
                raise
            why = "out of GPU memory" if oom else f"failed ({type(err).__name__})"
            print(f"  {NAMES[name]}{label}: {why}, left out: "
                  f"{str(err).strip().splitlines()[0][:150]}", flush=True)
            continue
        if label:
            print(f"  {NAMES[name]}{label}: first call {time.perf_counter() - t0:.1f} s",
                  flush=True)
        kept[name] = fn
    if len(kept) < len(fns) and device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    return kept


def compile_blocks(models: dict[str, torch.nn.Module]) -> bool:
    """Each DiT block through ``torch.compile`` (static shapes): ours as the trainer does it,
    the public model's blocks the same way. False where ours could not compile."""
    for model in models.values():
        if isinstance(model, DiT):
            if not model.compile_blocks(True, dynamic=False):
                return False
        else:
            for block in model.blocks:
                block.compile(dynamic=False)
    return True


def train_config(preset: str, n: int, rounds: int, diffusion: GaussianDiffusion,
                 device: torch.device, peak: float | None, compiled: bool) -> None:
    torch.manual_seed(0)
    ours = build_dit(preset, V)
    perturb_(ours)
    models = {"base": public_dit(ours), "ours": ours, "fused": public_dit(ours, fused_attn=True)}
    for m in models.values():
        m.to(device).train()
    batch = make_batch(n, device)
    n_params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"{preset}, batch {n} ({n_params:.1f}M parameters), train step:", flush=True)
    fl = TRAIN_FLOPS_FACTOR * sum(ours.flops_per_image().values())
    print(flops_line(ours.flops_per_image(), fl, f"train step = {TRAIN_FLOPS_FACTOR} x forward"),
          flush=True)
    print("  check at equal weights: " + check_same(
        ours, {"base": models["base"], "fused": models["fused"]}, diffusion, batch), flush=True)
    with tf32(device):
        steps = warm_up({k: step_fn(m, diffusion, batch) for k, m in models.items()}, device)
        models = {k: models[k] for k in steps}
        report(interleave(steps, rounds, device), "s/step", n, fl, peak)
        if not compiled:
            return
        label = " (compiled blocks)"
        if not compile_blocks(models):
            print(f"  {NAMES['ours']}{label}: torch.compile failed (see the warning); the "
                  "compiled blocks are not timed", flush=True)
            return
        steps = warm_up(steps, device, label)
        if "ours" in steps and not ours.blocks_compiled:
            print(f"  {NAMES['ours']}{label}: fell back to eager at its first call (see the "
                  "warning); its line below is eager", flush=True)
        report(interleave(steps, rounds, device), "s/step", n, fl, peak, label)


def large_forward(rounds: int, device: torch.device, peak: float | None) -> None:
    torch.manual_seed(0)
    ours = build_dit("L/256", V)
    perturb_(ours)
    models = {"base": public_dit(ours), "ours": ours, "fused": public_dit(ours, fused_attn=True)}
    batch = make_batch(1, device)
    args = (batch["x"], batch["t"])
    kw = {"age": batch["age"], "sex": batch["sex"], "modality": batch["modality"],
          "force_drop": batch["drop"]}
    n_params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"L/256, batch 1 ({n_params:.0f}M parameters), forward only (no_grad):", flush=True)
    fl = sum(ours.flops_per_image().values())
    print(flops_line(ours.flops_per_image(), fl, "forward"), flush=True)
    with torch.no_grad():
        for m in models.values():
            m.to(device).eval()
        out = {k: m(*args, **kw) for k, m in models.items()}  # float32: the check
        print(f"  check: max |output diff| to ours: base "
              f"{(out['base'] - out['ours']).abs().max().item():.1e}, fused "
              f"{(out['fused'] - out['ours']).abs().max().item():.1e} (max |output| "
              f"{out['ours'].abs().max().item():.2f})", flush=True)
        del out

        def forward(m: torch.nn.Module) -> torch.Tensor:
            with autocast(device):
                return m(*args, **kw)
        with tf32(device):
            fns = warm_up({k: (lambda m=m: forward(m)) for k, m in models.items()}, device)
            report(interleave(fns, rounds, device), "s/forward", 1, fl, peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: bf16 autocast, TF32, fused AdamW (the trainer on CUDA) and MFU")
    ap.add_argument("--configs", default=None,
                    help="comma-separated preset:batch pairs timed as train steps (default: "
                         + "; ".join(f"{k} {v}" for k, v in DEFAULT_CONFIGS.items()) + ")")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true",
                    help="then time every model again with its DiT blocks torch.compile'd")
    ap.add_argument("--large", action="store_true", help="add L/256 forward-only timing")
    ap.add_argument("--large-rounds", type=int, default=3)
    ap.add_argument("--peak", type=float, default=None,
                    help="bf16 peak TFLOP/s for MFU (CUDA; default: measured here)")
    args = ap.parse_args()
    device = device_of(args.device)
    line, peak = header(device, args.peak)
    print(f"{line}; V = {V:,} voxels, T = 893 tokens of 256", flush=True)
    diffusion = GaussianDiffusion.linear()
    for item in (args.configs or DEFAULT_CONFIGS[device.type]).split(","):
        preset, n = item.split(":")
        train_config(preset, int(n), args.rounds, diffusion, device, peak, args.compile)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.large:
        large_forward(args.large_rounds, device, peak)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
