"""Train-step time of the genbrain DiT against the public code's DiT (timm Attention/Mlp), CPU.

One step = forward + IDDPM hybrid loss + backward + AdamW step (lr 1e-4, no weight decay, the
trainer's CPU settings), fp32, full V = 228,483 voxels (T = 893 tokens of 256), one fixed batch.

- baseline: ``benchmarks/_public_dit.py``: facebookresearch/DiT's ``models.py`` with a Conv1d
  patch embedder and timm's ``Attention``/``Mlp`` (copied verbatim from timm 1.0.31, which
  cannot be installed beside our CPU torch; see that file), attention on the explicit
  ``softmax(q k^T) v`` path that the public code's timm (0.6) ran, i.e. ``TIMM_FUSED_ATTN=0``;
- ours: :class:`genbrain.model.dit.DiT`;
- for reference only: the same baseline with timm >= 0.9's default fused attention.

The baseline gets the genbrain model's weights (perturbed away from the zero init), so before
timing the script checks that both compute the same loss and gradients. The loss is genbrain's
``GaussianDiffusion.training_losses`` for both (improved-diffusion's maths). Models are timed one
step at a time in interleaved rounds (order reversed every other round, as this machine is
shared and noisy); prints each model's median seconds per step and the ratio of medians, with
the range of the per-round ratios.

``--large`` adds the paper preset L/256 (depth 24, hidden 1024, ~460M parameters), forward pass
only (no_grad, batch 1): a train step of it does not fit a CPU benchmark.

    .venv/bin/python benchmarks/train_step.py [--configs tiny/256:4,S/256:2] [--rounds 5]
        [--large] [--large-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _public_dit import perturb_, public_dit

from genbrain.model.diffusion import GaussianDiffusion
from genbrain.model.dit import build_dit

V = 228_483
NAMES = {"base": "baseline, public DiT + timm Attention/Mlp, explicit attention",
         "ours": "ours, genbrain DiT",
         "fused": "reference: baseline with timm >= 0.9 default fused attention"}


def make_batch(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 1, V, generator=g), "noise": torch.randn(n, 1, V, generator=g),
            "t": torch.randint(0, 1000, (n,), generator=g),
            "age": torch.randn(n, generator=g), "sex": torch.randint(0, 2, (n,), generator=g),
            "modality": torch.randint(0, 34, (n,), generator=g),
            "drop": torch.arange(n) % 10 == 9}  # label dropout as the trainer passes it


def step_fn(model: torch.nn.Module, diffusion: GaussianDiffusion,
            batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    labels = {k: batch[k] for k in ("age", "sex", "modality")}

    def model_fn(x_t: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
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
    """Loss and gradient of every model at the shared starting weights; |differences| to ours."""
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


def interleave(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def report(times: dict[str, list[float]], unit: str) -> None:
    base = statistics.median(times["base"])
    for name, ts in times.items():
        med = statistics.median(ts)
        line = f"  {NAMES[name]}: median {med:.3f} {unit} ({len(ts)} rounds)"
        if name != "base":
            per_round = sorted(b / o for b, o in zip(times["base"], ts))
            line += (f", ratio {base / med:.2f}x (per round {per_round[0]:.2f}-"
                     f"{per_round[-1]:.2f}x)")
        print(line, flush=True)


def train_config(preset: str, n: int, rounds: int, diffusion: GaussianDiffusion) -> None:
    torch.manual_seed(0)
    ours = build_dit(preset, V)
    perturb_(ours)
    models = {"base": public_dit(ours), "ours": ours, "fused": public_dit(ours, fused_attn=True)}
    for m in models.values():
        m.train()
    batch = make_batch(n)
    n_params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"{preset}, batch {n} ({n_params:.1f}M parameters), train step:", flush=True)
    print("  check at equal weights: " + check_same(
        ours, {"base": models["base"], "fused": models["fused"]}, diffusion, batch), flush=True)
    steps = {k: step_fn(m, diffusion, batch) for k, m in models.items()}
    for fn in steps.values():  # warm-up: allocator, AdamW state
        fn()
    report(interleave(steps, rounds), "s/step")


def large_forward(rounds: int) -> None:
    torch.manual_seed(0)
    ours = build_dit("L/256", V)
    perturb_(ours)
    models = {"base": public_dit(ours), "ours": ours, "fused": public_dit(ours, fused_attn=True)}
    batch = make_batch(1)
    args = (batch["x"], batch["t"])
    kw = {"age": batch["age"], "sex": batch["sex"], "modality": batch["modality"],
          "force_drop": batch["drop"]}
    n_params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"L/256, batch 1 ({n_params:.0f}M parameters), forward only (no_grad):", flush=True)
    with torch.no_grad():
        for m in models.values():
            m.eval()
        out = {k: m(*args, **kw) for k, m in models.items()}  # also the warm-up
        print(f"  check: max |output diff| to ours: base "
              f"{(out['base'] - out['ours']).abs().max().item():.1e}, fused "
              f"{(out['fused'] - out['ours']).abs().max().item():.1e} (max |output| "
              f"{out['ours'].abs().max().item():.2f})", flush=True)
        del out
        report(interleave({k: (lambda m=m: m(*args, **kw)) for k, m in models.items()},
                          rounds), "s/forward")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny/256:4,S/256:2",
                    help="comma-separated preset:batch pairs timed as train steps")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--large", action="store_true", help="add L/256 forward-only timing")
    ap.add_argument("--large-rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at "
          f"start, torch {torch.__version__}, fp32; "
          f"V = {V:,} voxels, T = 893 tokens of 256", flush=True)
    diffusion = GaussianDiffusion.linear()
    for item in args.configs.split(","):
        preset, n = item.split(":")
        train_config(preset, int(n), args.rounds, diffusion)
    if args.large:
        large_forward(args.large_rounds)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
