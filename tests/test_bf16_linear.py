"""Our bf16 kernel (models/bf16_linear.py): torch's numbers, the same for a row whatever the batch,
built once into $SPECKV_HOME, and out of the way wherever it cannot be built, is wrong, or is slow."""

from __future__ import annotations

import platform

import pytest
import torch

from conftest import tiny_model
from speckv.models import bf16_linear, cpu_kernels

SMOL = "smollm2-135m-instruct"

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64")
    or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="the kernel needs x86-64 with AVX2")


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECKV_HOME", str(tmp_path))
    bf16_linear.kernel.cache_clear()
    yield tmp_path
    bf16_linear.kernel.cache_clear()


def _reference(x, w, b):
    """float32 sums of the same bf16 numbers, rounded once to bf16."""
    return torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float()).to(torch.bfloat16)


@pytest.mark.parametrize("k", [1, 2, 5, 6, 7, 13, 17])
@pytest.mark.parametrize("n,bias", [(33, True), (64, False)])
def test_the_product_is_torchs_in_float32_and_a_row_does_not_depend_on_its_batch(home, k, n, bias):
    lib = bf16_linear.kernel()
    assert lib is not None
    g = torch.Generator().manual_seed(k * n)
    w = torch.randn(n, 96, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    x = torch.randn(2, k, 96, generator=g).to(torch.bfloat16)
    got = bf16_linear.multiply(lib, x, w, b)
    assert got.shape == (2, k, n) and got.dtype == torch.bfloat16
    # the same sums in another order: at most one bf16 rounding step apart
    torch.testing.assert_close(got.float(), _reference(x, w, b).float(), rtol=8e-3, atol=1e-2)
    alone = torch.stack([torch.stack([bf16_linear.multiply(lib, x[i, j:j + 1], w, b)[0] for j in range(k)]) for i in range(2)])
    assert torch.equal(alone, got)  # bit for bit


def test_the_kernel_is_built_once_into_speckv_home(home):
    assert bf16_linear.kernel() is not None
    built = list((home / "kernels").glob("bf16_linear-*.so"))
    assert len(built) == 1 and not list((home / "kernels").glob(".*.tmp"))
    stamp = built[0].stat().st_mtime_ns
    bf16_linear.kernel.cache_clear()
    assert bf16_linear.kernel() is not None and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_a_wrong_kernel_is_not_used(home, monkeypatch, tmp_path):
    """A kernel that drops the last 8 columns of every row (a broken variant) fails the check at
    load, and a model keeps torch's layers."""
    broken = tmp_path / "broken.c"
    broken.write_text(bf16_linear.SOURCE.read_text().replace("t < d; t += 8", "t < d - 8; t += 8"))
    monkeypatch.setattr(bf16_linear, "SOURCE", broken)
    monkeypatch.setattr(cpu_kernels, "bf16_linear_pays", lambda: True)
    assert bf16_linear.kernel() is None
    model = tiny_model(0, hidden=32).to(torch.bfloat16)
    assert bf16_linear.install(model) == 0
    assert not any(isinstance(m, bf16_linear.Bf16Linear) for m in model.modules())


def test_no_compiler_no_kernel_and_no_error(home, monkeypatch):
    monkeypatch.setenv("CC", str(home / "no-such-cc"))
    assert bf16_linear.kernel() is None
    assert not list((home / "kernels").glob("*.so"))


def test_a_cache_it_cannot_write_means_no_kernel_and_no_error(home):
    (home / "kernels").write_text("a file in the way")
    assert bf16_linear.kernel() is None


def test_installed_where_it_pays_and_the_model_computes_the_same(home, monkeypatch):
    model = tiny_model(3, hidden=64, layers=2).to(torch.bfloat16)
    ids = torch.tensor([[5, 9, 2, 7, 1, 3]])
    with torch.no_grad():
        before = model(ids).logits.float()
    monkeypatch.setattr(cpu_kernels, "bf16_linear_pays", lambda: False)
    assert bf16_linear.install(model) == 0
    monkeypatch.setattr(cpu_kernels, "bf16_linear_pays", lambda: True)
    layers = bf16_linear.install(model)
    assert layers == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    assert type(model.lm_head) is bf16_linear.Bf16Linear and model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        after = model(ids).logits.float()
        one = torch.cat([model(ids[:, : i + 1]).logits[:, -1:].float() for i in range(ids.shape[1])], 1)
    torch.testing.assert_close(after, before, rtol=0.05, atol=0.05)  # bf16 rounding apart, no more
    torch.testing.assert_close(one, after, rtol=0.05, atol=0.05)
    assert bf16_linear.install(model) == 0  # already installed: nothing twice


def test_the_check_times_the_kernel_against_torch(home, monkeypatch):
    real = bf16_linear.multiply
    monkeypatch.setattr(bf16_linear, "multiply", lambda *a: __import__("time").sleep(0.05) or real(*a))
    assert cpu_kernels.bf16_linear_pays.__wrapped__() is False  # slower than torch: torch stays
    monkeypatch.setenv("CC", str(home / "no-such-cc"))
    bf16_linear.kernel.cache_clear()
    assert cpu_kernels.bf16_linear_pays.__wrapped__() is False  # cannot be built: torch stays


def test_load_model_gives_bf16_cpu_models_the_kernel_and_no_others(monkeypatch):
    from speckv.models.load import load_model

    monkeypatch.setattr(cpu_kernels, "bf16_linear_pays", lambda: True)
    kernelled = {level: sum(isinstance(m, bf16_linear.Bf16Linear) for m in load_model(SMOL, level, "cpu").model.modules())
                 for level in ("bf16", "fp32")}
    assert kernelled == {"bf16": 30 * 7 + 1, "fp32": 0}  # SmolLM2-135M: 30 layers of 7 products, and the head


def test_a_model_cast_after_loading_falls_back_to_torch(home, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "bf16_linear_pays", lambda: True)
    model = tiny_model(4, hidden=32).to(torch.bfloat16)
    assert bf16_linear.install(model) > 0
    model.float()  # the kernel reads bf16 only: float32 layers must run torch's product
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_model(4, hidden=32).to(torch.bfloat16).float()(ids).logits)
