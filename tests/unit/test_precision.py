"""genbrain.precision: bf16 autocast only where the device multiplies bf16 natively."""

import logging

import pytest
import torch

from genbrain import precision
from genbrain.precision import native_bf16, use_bf16


@pytest.mark.parametrize("native", [True, False])
def test_each_setting_on_a_cpu_with_and_without_native_bf16(monkeypatch, caplog, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    precision._warn_emulated.cache_clear()
    assert use_bf16("fp32", "cpu", "training") is False
    assert use_bf16("auto", "cpu", "training") is False  # auto: bf16 on CUDA only
    with caplog.at_level(logging.WARNING, logger="genbrain.precision"):
        assert use_bf16("bf16", "cpu", "sampling") is native
        use_bf16("bf16", "cpu", "sampling")
    warnings = [r.getMessage() for r in caplog.records]
    # emulated bf16 is refused with one warning per purpose and device, not one per call
    assert len(warnings) == (0 if native else 1), warnings
    if not native:
        assert warnings[0].startswith("sampling: precision bf16 asked for") and \
            "float32 is used" in warnings[0]


def test_auto_is_bf16_on_a_cuda_device_with_it(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert use_bf16("auto", torch.device("cuda"), "training") is True


def test_the_cpu_probe_answers_a_bool():
    assert isinstance(native_bf16("cpu"), bool)
    assert native_bf16("meta") is False
