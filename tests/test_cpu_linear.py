"""Our linear kernel (models/cpu_linear.py), bf16 and float32: torch's numbers, the same for a row
whatever the batch, built once into $SPECKV_HOME, and out of the way wherever it cannot be built, is
wrong, or is slow."""

from __future__ import annotations

import platform

import pytest
import torch

from conftest import tiny_model
from speckv.models import cpu_linear, cpu_kernels

SMOL = "smollm2-135m-instruct"

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64")
    or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="the kernel needs x86-64 with AVX2")


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECKV_HOME", str(tmp_path))
    cpu_linear.kernel.cache_clear()
    yield tmp_path
    cpu_linear.kernel.cache_clear()


def _reference(x, w, b):
    """float32 sums of the same numbers, rounded once to their dtype."""
    return torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float()).to(w.dtype)


#: the same sums in another order: at most one bf16 rounding step apart, float32 to a few ulps
CLOSE = {torch.bfloat16: {"rtol": 8e-3, "atol": 1e-2}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [1, 2, 5, 6, 7, 13, 17])
@pytest.mark.parametrize("n,bias", [(33, True), (64, False)])
def test_the_product_is_torchs_and_a_row_does_not_depend_on_its_batch(home, k, n, bias, dtype):
    lib = cpu_linear.kernel()
    assert lib is not None
    g = torch.Generator().manual_seed(k * n)
    w = torch.randn(n, 96, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    x = torch.randn(2, k, 96, generator=g).to(dtype)
    got = cpu_linear.multiply(lib, x, w, b)
    assert got.shape == (2, k, n) and got.dtype == dtype
    torch.testing.assert_close(got.float(), _reference(x, w, b).float(), **CLOSE[dtype])
    alone = torch.stack([torch.stack([cpu_linear.multiply(lib, x[i, j:j + 1], w, b)[0] for j in range(k)]) for i in range(2)])
    assert torch.equal(alone, got)  # bit for bit


def test_the_kernel_is_built_once_into_speckv_home(home):
    assert cpu_linear.kernel() is not None
    built = list((home / "kernels").glob("cpu_linear-*.so"))
    assert len(built) == 1 and not list((home / "kernels").glob(".*.tmp"))
    stamp = built[0].stat().st_mtime_ns
    cpu_linear.kernel.cache_clear()
    assert cpu_linear.kernel() is not None and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_a_wrong_kernel_is_not_used(home, monkeypatch, tmp_path):
    """A kernel that drops the last 8 columns of every row (a broken variant) fails the check at
    load, and a model keeps torch's layers."""
    broken = tmp_path / "broken.c"
    broken.write_text(cpu_linear.SOURCE.read_text().replace("t < d; t += 8", "t < d - 8; t += 8"))
    monkeypatch.setattr(cpu_linear, "SOURCE", broken)
    monkeypatch.setattr(cpu_kernels, "linear_pays", lambda dtype: True)
    assert cpu_linear.kernel() is None
    model = tiny_model(0, hidden=32).to(torch.bfloat16)
    assert cpu_linear.install(model) == 0
    assert not any(isinstance(m, cpu_linear.CpuLinear) for m in model.modules())


def test_no_compiler_no_kernel_and_no_error(home, monkeypatch):
    monkeypatch.setenv("CC", str(home / "no-such-cc"))
    assert cpu_linear.kernel() is None
    assert not list((home / "kernels").glob("*.so"))


def test_a_cache_it_cannot_write_means_no_kernel_and_no_error(home):
    (home / "kernels").write_text("a file in the way")
    assert cpu_linear.kernel() is None


def test_installed_where_it_pays_and_the_model_computes_the_same(home, monkeypatch):
    model = tiny_model(3, hidden=64, layers=2).to(torch.bfloat16)
    ids = torch.tensor([[5, 9, 2, 7, 1, 3]])
    with torch.no_grad():
        before = model(ids).logits.float()
    monkeypatch.setattr(cpu_kernels, "linear_pays", lambda dtype: False)
    assert cpu_linear.install(model) == 0
    monkeypatch.setattr(cpu_kernels, "linear_pays", lambda dtype: True)
    layers = cpu_linear.install(model)
    assert layers == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    assert type(model.lm_head) is cpu_linear.CpuLinear and model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        after = model(ids).logits.float()
        one = torch.cat([model(ids[:, : i + 1]).logits[:, -1:].float() for i in range(ids.shape[1])], 1)
    torch.testing.assert_close(after, before, rtol=0.05, atol=0.05)  # bf16 rounding apart, no more
    torch.testing.assert_close(one, after, rtol=0.05, atol=0.05)
    assert cpu_linear.install(model) == 0  # already installed: nothing twice


def test_the_check_times_the_kernel_against_torch(home, monkeypatch):
    real = cpu_linear.multiply
    monkeypatch.setattr(cpu_linear, "multiply", lambda *a: __import__("time").sleep(0.05) or real(*a))
    assert cpu_kernels.linear_pays.__wrapped__(torch.bfloat16) is False  # slower than torch: torch stays
    monkeypatch.setenv("CC", str(home / "no-such-cc"))
    cpu_linear.kernel.cache_clear()
    assert cpu_kernels.linear_pays.__wrapped__(torch.bfloat16) is False  # cannot be built: torch stays


def test_load_model_gives_bf16_and_float32_cpu_models_the_kernel_and_no_others(monkeypatch):
    from speckv.models.load import load_model

    monkeypatch.setattr(cpu_kernels, "linear_pays", lambda dtype: True)
    kernelled = {level: sum(isinstance(m, cpu_linear.CpuLinear) for m in load_model(SMOL, level, "cpu").model.modules())
                 for level in ("bf16", "fp32", "fp16")}
    assert kernelled == {"bf16": 30 * 7 + 1, "fp32": 30 * 7 + 1, "fp16": 0}  # SmolLM2-135M: 30 layers of 7, and the head


def test_a_model_cast_after_loading_falls_back_to_torch(home, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "linear_pays", lambda dtype: True)
    model = tiny_model(4, hidden=32).to(torch.bfloat16)
    assert cpu_linear.install(model) > 0
    model.half()  # the kernel reads bf16 and float32 only: float16 layers must run torch's product
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_model(4, hidden=32).to(torch.bfloat16).half()(ids).logits)


def test_a_float32_model_computes_torchs_numbers_to_float32_rounding(home, monkeypatch):
    model = tiny_model(5, hidden=64, layers=2)
    ids = torch.tensor([[5, 9, 2, 7, 1, 3]])
    with torch.no_grad():
        before = model(ids).logits
    monkeypatch.setattr(cpu_kernels, "linear_pays", lambda dtype: dtype == torch.float32)
    assert cpu_linear.install(model) == 2 * 7 + 1
    assert cpu_linear.install(tiny_model(5, hidden=64, layers=2).to(torch.bfloat16)) == 0  # bf16 did not pay
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)
