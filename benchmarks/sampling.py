"""DDIM-50 + CFG 1.2 sampling images/s, genbrain's DDIMSampler + DiT against the public loop.

CPU (fp32) or CUDA (bf16 model calls), full V = 228,483 voxels, with the analytic FLOPs per
image and, on CUDA, MFU.

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
- ``ours, bf16``: on CPU, the same with ``precision="bf16"`` (the model calls under bf16
  autocast, the DDIM update in float32; ``synthesize.precision``), timed only where the CPU has
  native bf16 (AVX512-BF16 or AMX): elsewhere it is emulated and no faster.

On CUDA every model call runs under bf16 autocast (ours: ``precision="bf16"``, the GPU
configuration's ``synthesize.precision``; the public loop likewise), and ``--compile`` then
times all three again with each DiT block through ``torch.compile`` (``synthesize.compile``'s
default on CUDA; ``dynamic=False``; the first, compiling run's time printed).

The same seed gives the same initial noise to all three; the script prints the max |difference|
of their images to ours. Runs are timed in interleaved rounds (order reversed every other round;
machines are shared and noisy); prints images/s from the median run time, the achieved TFLOP/s
(2 x 50 forward passes per image: the conditional and null rows, analytic FLOPs of
:func:`genbrain.model.dit.forward_flops`), on CUDA the MFU against a bf16 matmul peak measured
in this process (``--peak`` overrides it), and the ratios.

    .venv/bin/python benchmarks/sampling.py [--preset tiny/256] [--images 2] [--rounds 3]
    python3 benchmarks/sampling.py --device cuda --preset L/256 --images 32 [--compile]
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

from _mfu import autocast, device_of, flops_line, header, rate, sync
from _public_dit import perturb_, public_dit

from genbrain.model.diffusion import DDIMSampler, GaussianDiffusion
from genbrain.model.dit import build_dit

V = 228_483
STEPS, SCALE = 50, 1.2
NAMES = {"public": "baseline: public loop (cond, null: 2 model calls/step), public DiT",
         "loop_ours": "public loop, genbrain DiT",
         "ours": "ours: DDIMSampler (cond + null in 1 call/step), genbrain DiT",
         "ours_bf16": "ours, bf16 model calls (synthesize.precision: bf16)"}


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
    """The public code's guided DDIM loop, model calls under the device's autocast (bf16 on
    CUDA); returns (N, 1, V) on the labels' device."""
    d = DDIMSampler(GaussianDiffusion.linear(), STEPS).diffusion  # the respaced schedule
    first = next(iter(labels.values()))
    n, device = first.shape[0], first.device
    x = torch.randn((n, 1, V), generator=generator, device=generator.device).to(device)
    cond = torch.zeros(n, dtype=torch.bool, device=device)
    null = torch.ones(n, dtype=torch.bool, device=device)
    for i in reversed(range(STEPS)):
        t = torch.tensor([i] * n, device=device)
        t_model = torch.tensor(d.timestep_map, device=device)[t]  # _WrappedModel's mapping
        with autocast(device):
            eps_c = model(x, t_model, force_drop=cond, **labels)[:, :1].float()
            eps_u = model(x, t_model, force_drop=null, **labels)[:, :1].float()
        eps = eps_u + SCALE * (eps_c - eps_u)
        x0 = (_extract_into_tensor(d.sqrt_recip_alphas_cumprod, t, x.shape) * x
              - _extract_into_tensor(d.sqrt_recipm1_alphas_cumprod, t, x.shape) * eps)
        abar_prev = _extract_into_tensor(d.alphas_cumprod_prev, t, x.shape)
        x = x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev) * eps  # eta = 0
    return x


def time_runs(runs: dict[str, Callable[[], torch.Tensor]], rounds: int, device: torch.device,
              first_label: str = "") -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Round 0 is the warm-up (with ``first_label``, its times are printed: the compile) and
    keeps the images for the check; then ``rounds`` interleaved timed rounds."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    images: dict[str, torch.Tensor] = {}
    for r in range(rounds + 1):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            out = runs[name]()
            sync(device)
            if r == 0:
                images[name] = out
                if first_label:
                    print(f"  {NAMES[name]}{first_label}: first run "
                          f"{time.perf_counter() - t0:.1f} s", flush=True)
            else:
                times[name].append(time.perf_counter() - t0)
    return times, images


def check(images: dict[str, torch.Tensor], label: str = "") -> None:
    """Max |image - ours| and the correlation r of each run's images with ours (under bf16 on
    CUDA the runs' rounding differences grow over the 50 steps: r says how far)."""
    ref = images["ours"]
    scale = ref.abs().max().item()
    parts = []
    for k, img in images.items():
        if k in ("ours", "ours_bf16"):
            continue
        diff = (img - ref).abs().max().item()
        r = torch.corrcoef(torch.stack([img.flatten(), ref.flatten()]).float())[0, 1].item()
        parts.append(f"{'public' if k == 'public' else 'public loop with genbrain DiT'} "
                     f"{diff:.1e} ({diff / scale:.1e} of max |image|, r = {r:.6f})")
    print(f"check{label}: max |image - ours|: {'; '.join(parts)}; max |image| {scale:.1f} "
          "(a random model's images: large, as x_0 estimates at t = 999 are ~160 x eps)",
          flush=True)
    if "ours_bf16" in images:
        d = (images["ours_bf16"] - ref).abs().max().item()
        r = torch.corrcoef(torch.stack([images["ours_bf16"].flatten(), ref.flatten()]))[0, 1]
        print(f"  bf16 vs fp32 images: max |diff| {d / scale:.1e} of max |image|, r = {r:.6f}",
              flush=True)


def report(times: dict[str, list[float]], n: int, flops: float, peak: float | None,
           label: str = "") -> None:
    base_med = statistics.median(times["public"])
    for name, ts in times.items():
        med = statistics.median(ts)
        line = (f"  {NAMES[name]}{label}: {rate(n / med, flops, peak)} (median {med:.2f} s/run, "
                f"{len(ts)} rounds)")
        if name != "public":
            per = sorted(b / o for b, o in zip(times["public"], ts))
            line += f", ratio {base_med / med:.2f}x (per round {per[0]:.2f}-{per[-1]:.2f}x)"
        print(line, flush=True)
    loop, mine = statistics.median(times["loop_ours"]), statistics.median(times["ours"])
    line = f"  sampler alone (same genbrain DiT, public loop -> DDIMSampler){label}: " \
           f"{loop / mine:.2f}x"
    if "ours_bf16" in times:
        line += f", with bf16 model calls {loop / statistics.median(times['ours_bf16']):.2f}x"
    print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: bf16 model calls (synthesize.precision on the GPU) and MFU")
    ap.add_argument("--preset", default="tiny/256")
    ap.add_argument("--images", type=int, default=2, help="label rows sampled per run (k = 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true",
                    help="then time all three again with the DiT blocks torch.compile'd")
    ap.add_argument("--peak", type=float, default=None,
                    help="bf16 peak TFLOP/s for MFU (CUDA; default: measured here)")
    args = ap.parse_args()
    device = device_of(args.device)
    cuda = device.type == "cuda"
    line, peak = header(device, args.peak)
    print(f"{line}; V = {V:,} voxels; DDIM {STEPS} steps, eta 0, CFG {SCALE}; {args.preset}, "
          f"{args.images} images per run", flush=True)
    torch.manual_seed(0)
    ours = build_dit(args.preset, V)
    perturb_(ours)  # a model that computes something: adaLN-Zero starts as the identity
    base = public_dit(ours)
    ours.to(device).eval()
    base.to(device).eval()
    fl = 2 * STEPS * sum(ours.flops_per_image().values())
    print(flops_line(ours.flops_per_image(), fl,
                     f"DDIM-{STEPS} + CFG = 2 x {STEPS} forward passes"), flush=True)
    g = torch.Generator().manual_seed(1)
    n = args.images
    labels = {"age": torch.randn(n, generator=g), "sex": torch.randint(0, 2, (n,), generator=g),
              "modality": torch.randint(0, 34, (n,), generator=g)}
    labels = {k: v.to(device) for k, v in labels.items()}
    sampler = DDIMSampler(GaussianDiffusion.linear(), STEPS, guidance_scale=SCALE,
                          precision="bf16" if cuda else "fp32")
    bf16 = DDIMSampler(GaussianDiffusion.linear(), STEPS, guidance_scale=SCALE,
                       precision="bf16")
    native_bf16 = not cuda and torch.ops.mkldnn._is_mkldnn_bf16_supported()

    def seed() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed)

    runs = {
        "public": lambda: public_sample(base, labels, seed()),
        "loop_ours": lambda: public_sample(ours, labels, seed()),
        "ours": lambda: sampler.sample(ours, labels, V, seed()),
    }
    if native_bf16:
        runs["ours_bf16"] = lambda: bf16.sample(ours, labels, V, seed())
    times, images = time_runs(runs, args.rounds, device)
    check(images)
    if not cuda and not native_bf16:
        print("  bf16 not timed: this CPU has no native bf16 (AVX512-BF16 / AMX)", flush=True)
    report(times, n, fl, peak)
    if args.compile:
        label = " (compiled blocks)"
        if not ours.compile_blocks(True, dynamic=False):
            print(f"  {NAMES['ours']}{label}: torch.compile failed (see the warning); not "
                  "timed", flush=True)
        else:
            for block in base.blocks:
                block.compile(dynamic=False)
            times, images = time_runs(runs, args.rounds, device, label)
            if not ours.blocks_compiled:
                print(f"  ours{label}: fell back to eager at its first call (see the warning)",
                      flush=True)
            check(images, label)
            report(times, n, fl, peak, label)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
