"""DDIM-50 + CFG 1.2 sampling images/s: genbrain's DDIMSampler + DiT against the public code's
per-step loop, CPU, fp32, full V = 228,483 voxels.

- baseline ``public``: the public code's way, written out below (:func:`public_sample`): for
  each of the 50 steps run the model once on the conditional labels and once on the null labels,
  combine epsilon (``eps_u + 1.2 (eps_c - eps_u)``), then the DDIM (eta 0) update with the
  schedule gathered per step from numpy arrays (improved-diffusion's ``_extract_into_tensor``),
  under ``torch.no_grad``. The model is the public DiT (``benchmarks/_public_dit.py``: DiT's
  models.py with timm's Attention/Mlp, explicit attention as the public code's timm ran it)
  holding the same weights as ours. (improved-diffusion's ``ddim_sample`` also computes the
  learned variance and re-derives epsilon from x_0 at each step; left out here, which only
  makes the baseline faster.)
- ``public loop, our DiT``: the same loop driving the genbrain DiT, to separate what the
  sampler contributes from what the model contributes;
- ours: ``DDIMSampler(GaussianDiffusion.linear(), 50, guidance_scale=1.2).sample(DiT, ...)``:
  conditional and null rows in one model batch;
- ``ours, bf16``: the same with ``precision="bf16"`` (the model calls under bf16 autocast, the
  DDIM update in float32; ``synthesize.precision``), timed only where the CPU has native bf16
  (AVX512-BF16 or AMX): elsewhere it is emulated and no faster.

The same seed gives the same initial noise to all three; the script prints the max |difference|
of their images to ours. Runs are timed in interleaved rounds (order reversed every other round;
this machine is shared and noisy); prints images/s from the median run time, and the ratios.

    .venv/bin/python benchmarks/sampling.py [--preset tiny/256] [--images 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _public_dit import perturb_, public_dit

from genbrain.model.diffusion import DDIMSampler, GaussianDiffusion
from genbrain.model.dit import build_dit

V = 228_483
STEPS, SCALE = 50, 1.2


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor,
                         broadcast_shape: tuple[int, ...]) -> torch.Tensor:
    """improved-diffusion's per-step schedule lookup (numpy -> torch, every call)."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    while len(res.shape) < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


@torch.no_grad()
def public_sample(model: Callable[..., torch.Tensor], labels: Mapping[str, torch.Tensor],
                  generator: torch.Generator) -> torch.Tensor:
    """The public code's guided DDIM loop; returns (N, 1, V)."""
    d = DDIMSampler(GaussianDiffusion.linear(), STEPS).diffusion  # the respaced schedule
    n = next(iter(labels.values())).shape[0]
    x = torch.randn((n, 1, V), generator=generator, device=generator.device)
    cond = torch.zeros(n, dtype=torch.bool)
    null = torch.ones(n, dtype=torch.bool)
    for i in reversed(range(STEPS)):
        t = torch.tensor([i] * n)
        t_model = torch.from_numpy(d.timestep_map)[t]  # improved-diffusion's _WrappedModel
        eps_c = model(x, t_model, force_drop=cond, **labels)[:, :1]
        eps_u = model(x, t_model, force_drop=null, **labels)[:, :1]
        eps = eps_u + SCALE * (eps_c - eps_u)
        x0 = (_extract_into_tensor(d.sqrt_recip_alphas_cumprod, t, x.shape) * x
              - _extract_into_tensor(d.sqrt_recipm1_alphas_cumprod, t, x.shape) * eps)
        abar_prev = _extract_into_tensor(d.alphas_cumprod_prev, t, x.shape)
        x = x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev) * eps  # eta = 0
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny/256")
    ap.add_argument("--images", type=int, default=2, help="label rows sampled per run (k = 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at "
          f"start, torch {torch.__version__}, fp32; "
          f"V = {V:,} voxels; DDIM {STEPS} steps, eta 0, CFG {SCALE}; {args.preset}, "
          f"{args.images} images per run", flush=True)
    torch.manual_seed(0)
    ours = build_dit(args.preset, V)
    perturb_(ours)  # a model that computes something: adaLN-Zero starts as the identity
    base = public_dit(ours)
    ours.eval()
    base.eval()
    g = torch.Generator().manual_seed(1)
    n = args.images
    labels = {"age": torch.randn(n, generator=g), "sex": torch.randint(0, 2, (n,), generator=g),
              "modality": torch.randint(0, 34, (n,), generator=g)}
    sampler = DDIMSampler(GaussianDiffusion.linear(), STEPS, guidance_scale=SCALE)
    bf16 = DDIMSampler(GaussianDiffusion.linear(), STEPS, guidance_scale=SCALE,
                       precision="bf16")
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()

    def seed() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed)

    runs = {
        "public": lambda: public_sample(base, labels, seed()),
        "loop_ours": lambda: public_sample(ours, labels, seed()),
        "ours": lambda: sampler.sample(ours, labels, V, seed()),
    }
    if native_bf16:
        runs["ours_bf16"] = lambda: bf16.sample(ours, labels, V, seed())
    names = {"public": "baseline: public loop (cond, null: 2 model calls/step), public DiT",
             "loop_ours": "public loop, genbrain DiT",
             "ours": "ours: DDIMSampler (cond + null in 1 call/step), genbrain DiT",
             "ours_bf16": "ours, bf16 model calls (synthesize.precision: bf16)"}
    times: dict[str, list[float]] = {k: [] for k in runs}
    images: dict[str, torch.Tensor] = {}
    for r in range(args.rounds + 1):  # round 0: warm-up, keeps the images for the check
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            out = runs[name]()
            if r == 0:
                images[name] = out
            else:
                times[name].append(time.perf_counter() - t0)
    ref = images["ours"]
    scale = ref.abs().max().item()
    diffs = {k: (images[k] - ref).abs().max().item() for k in images if k != "ours"}
    print(f"check: max |image - ours|: public {diffs['public']:.1e} "
          f"({diffs['public'] / scale:.1e} of max |image|), public loop with genbrain DiT "
          f"{diffs['loop_ours']:.1e} ({diffs['loop_ours'] / scale:.1e}); max |image| {scale:.1f} "
          "(a random model's images: large, as x_0 estimates at t = 999 are ~160 x eps)",
          flush=True)
    if native_bf16:
        r = torch.corrcoef(torch.stack([images["ours_bf16"].flatten(), ref.flatten()]))[0, 1]
        print(f"  bf16 vs fp32 images: max |diff| {diffs['ours_bf16'] / scale:.1e} of max "
              f"|image|, r = {r:.6f}", flush=True)
    else:
        print("  bf16 not timed: this CPU has no native bf16 (AVX512-BF16 / AMX)", flush=True)
    base_med = statistics.median(times["public"])
    for name, ts in times.items():
        med = statistics.median(ts)
        line = f"  {names[name]}: {n / med:.3f} images/s (median {med:.1f} s/run, " \
               f"{len(ts)} rounds)"
        if name != "public":
            per = sorted(b / o for b, o in zip(times["public"], ts))
            line += f", ratio {base_med / med:.2f}x (per round {per[0]:.2f}-{per[-1]:.2f}x)"
        print(line, flush=True)
    loop, mine = statistics.median(times["loop_ours"]), statistics.median(times["ours"])
    line = f"  sampler alone (same genbrain DiT, public loop -> DDIMSampler): {loop / mine:.2f}x"
    if native_bf16:
        line += f", with bf16 model calls {loop / statistics.median(times['ours_bf16']):.2f}x"
    print(f"{line}; load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
