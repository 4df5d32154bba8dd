"""The CPU kernel checks time the quantized product against bf16 and say slow where it is slow."""

from __future__ import annotations

import time

import torch

from speckv.models import cpu_kernels


def test_a_slow_int8_product_does_not_pay(monkeypatch):
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: time.sleep(0.05) or real(a, b))  # a scalar fallback
    assert cpu_kernels.int8_pays.__wrapped__() is False


def test_a_fast_int8_product_pays(monkeypatch):
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: None)  # as fast as can be
    assert cpu_kernels.int8_pays.__wrapped__() is True


def test_failing_or_slow_kernels_do_not_pay(monkeypatch):
    def broken(a, b):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(torch, "_int_mm", broken)
    assert cpu_kernels.int8_pays.__wrapped__() is False
    import bitsandbytes

    monkeypatch.setattr(bitsandbytes, "matmul_4bit", lambda *a, **k: time.sleep(0.05))  # a dequantizing fallback
    assert cpu_kernels.nf4_pays.__wrapped__() is False
    monkeypatch.setattr(bitsandbytes, "matmul_4bit", lambda *a, **k: None)
    assert cpu_kernels.nf4_pays.__wrapped__() is True
