"""What the model benchmarks (``train_step.py``, ``sampling.py``, ``trainer_compile.py``) share:
the device and its arithmetic as the trainer sets it, the bf16 matrix-product peak measured in
the same process, and the lines that turn a time into images/s, TFLOP/s and MFU.

The FLOPs come from :func:`genbrain.model.dit.forward_flops` (the one formula; training =
``TRAIN_FLOPS_FACTOR`` x forward). MFU = achieved FLOP/s / peak, where the peak is what this
GPU's bf16 matrix products reach here and now (``--peak`` overrides it), not the datasheet's.
On CPU there is no peak to hold the model against: the lines print TFLOP/s and "MFU: n/a".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import torch

from genbrain.training.loop import matmul_precision

PEAK_SIZE = 8192  # an 8192^3 product: ~1.4 ms on an H200, far past launch overhead


def device_of(name: str) -> torch.device:
    """``cpu`` or ``cuda``; a clear exit where CUDA is asked for and absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch here sees no CUDA device "
                         f"(torch {torch.__version__})")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The trainer's model-call precision (``precision: auto``): bf16 autocast on CUDA, fp32 on
    CPU (``genbrain.training.loop``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


#: TF32 for float32 matmuls on CUDA while timing: the trainer's own context manager
tf32 = matmul_precision


def measure_bf16_peak(device: torch.device, size: int = PEAK_SIZE, reps: int = 20,
                      trials: int = 3) -> float:
    """TFLOP/s of ``size``^3 bf16 matrix products on random data, timed with CUDA events:
    the mean over ``reps`` back-to-back products, best of ``trials`` after 3 warm-ups."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=g)
    c = torch.empty_like(a)
    for _ in range(3):
        torch.mm(a, b, out=c)
    best = 0.0
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3 / reps
        best = max(best, 2 * size**3 / seconds / 1e12)
    del a, b, c
    torch.cuda.empty_cache()
    return best


def header(device: torch.device, peak: float | None) -> tuple[str, float | None]:
    """The run's first line and the peak (TFLOP/s) MFU is taken against: ``peak`` if given,
    else measured on CUDA, None on CPU."""
    if device.type == "cpu":
        return (f"CPU, {torch.get_num_threads()} threads, load average "
                f"{os.getloadavg()[0]:.1f} at start, torch {torch.__version__}, fp32; "
                "MFU: n/a on CPU (no peak measured)"), None
    name = torch.cuda.get_device_name(device)
    if peak is None:
        peak = measure_bf16_peak(device)
        how = f"measured here: {PEAK_SIZE}^3 bf16 matmul, best of 3 x 20"
    else:
        how = "given by --peak"
    return (f"CUDA, {name}, torch {torch.__version__} (CUDA {torch.version.cuda}); bf16 "
            f"autocast model calls and TF32 matmuls as the trainer runs on CUDA; bf16 peak "
            f"{peak:.0f} TFLOP/s ({how})"), peak


def flops_line(parts: Mapping[str, int], per_image: float, what: str) -> str:
    """The analytic FLOPs of one image: the forward by part and what one image costs here."""
    fwd = sum(parts.values())
    split = ", ".join(f"{k} {v / 1e9:.4g}" for k, v in parts.items())
    return (f"  analytic FLOPs per image: forward {fwd / 1e9:.2f} G ({split}); {what}: "
            f"{per_image / 1e9:,.1f} G")


def rate(images_per_s: float, flops_per_image: float, peak: float | None) -> str:
    """``X img/s, Y TFLOP/s[, MFU Z%]`` (analytic FLOPs, so the same work for every model;
    GFLOP/s below 1 TFLOP/s)."""
    achieved = images_per_s * flops_per_image / 1e12
    speed = f"{achieved:.3g} TFLOP/s" if achieved >= 1 else f"{1e3 * achieved:.3g} GFLOP/s"
    line = f"{images_per_s:,.3g} img/s, {speed}"
    return line + (f", MFU {100 * achieved / peak:.1f}%" if peak else "")
