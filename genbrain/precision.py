"""When model calls run under bf16 autocast (training and sampling alike).

bf16 pays only where the hardware multiplies bf16 natively: CUDA GPUs, and CPUs with
AVX512-BF16 or AMX (1.4-2x for the demo's training step and 1.38x for its sampler on the
project's AMD EPYC, docs/benchmarks.md). Elsewhere oneDNN emulates it, slower than float32 and
less exact, so a bf16 request there runs in float32 with one warning: a config written for a
fast machine (the demo's) stays correct, and no slower, on any other.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 natively (a CUDA GPU that supports it; a CPU with
    AVX512-BF16 or AMX, as oneDNN reports it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(probe()) if probe is not None else False
    return False


def use_bf16(precision: str, device: torch.device | str, what: str) -> bool:
    """Whether ``what`` (e.g. "training") runs its model calls under bf16 autocast on
    ``device``: ``fp32`` never; ``auto`` on CUDA only; ``bf16`` where the device has native bf16,
    and float32 with one warning where it has not."""
    device = torch.device(device)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return False
    if native_bf16(device):
        return True
    _warn_emulated(what, device.type)
    return False


@functools.cache
def _warn_emulated(what: str, device_type: str) -> None:
    log.warning("%s: precision bf16 asked for, but this %s has no native bf16 (AVX512-BF16 or "
                "AMX on a CPU); emulated bf16 is slower than float32, so float32 is used",
                what, device_type)
