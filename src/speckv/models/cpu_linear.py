"""Linear layers on CPUs where torch's small products are slow (AVX2): our own kernel, where it pays.

Why: on such CPUs torch multiplies a bf16 weight by a few rows in code whose time grows with every
row (no bf16 arithmetic): a Qwen2.5-Coder-1.5B target on an AVX2 EPYC took 114 ms + 176 ms per
verified token, so a verification cost about what generating its tokens one at a time would, and
speculation could not pay. Its float32 products (MKL) are faster but still grow (one 8960 x 1536
product: 4 ms at 1 row, 15 ms at 9). `cpu_linear.c` reads each weight row once (a bf16 one widened
to float32 in registers) and multiplies it into up to 3 activation rows at a time, 4 weight rows a
tile: a few rows cost about what one does (memory-bound), and a prompt's hundreds of rows a
quarter of torch's bf16 time (measured, bf16, 8960 x 1536, 2 threads: 1 row 2.0 against 2.3 ms,
9 rows 4.9 against 14.2, 256 rows 91 against 376).

Invariants:
- Same numbers: each output is a float32 dot product of the weight and the activations (rounded
  once to bf16 for a bf16 layer), as torch's layer computes it up to summation order; and the same
  sum in the same order for every row whatever the batch, so one-token and batched forwards agree
  exactly in these layers.
- Nothing is copied: a layer keeps its weight and bias (ties, state dicts, `.weight` readers are
  unchanged); only `forward` differs, and only for CPU inputs of the layer's own dtype without autograd.
- Per dtype, only where it times faster than torch (models/cpu_kernels.py): AVX-512 BF16 machines
  keep torch's native bf16 path.
- Compiled once per machine into $SPECKV_HOME/kernels (locked; temp file, then rename); any
  failure (no C compiler, no AVX2, a test run that disagrees, a cache it cannot write) leaves
  torch's layers in place.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from speckv.errors import SpeckvError
from speckv.files import ensure_dir, remove, temp_path, wait_lock

SOURCE = Path(__file__).with_name("cpu_linear.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
#: the weight dtypes the kernel multiplies, and its entry point for each
ENTRY = {torch.bfloat16: "speckv_linear_bf16", torch.float32: "speckv_linear_f32"}


class CpuLinear(torch.nn.Linear):
    """An nn.Linear whose products run on `kernel` (made by `install`, never built)."""

    kernel: ctypes.CDLL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype != self.weight.dtype or x.device.type != "cpu" or not x.numel() or not eligible(self, CpuLinear)
                or (x.requires_grad and torch.is_grad_enabled())):
            return super().forward(x)
        return multiply(self.kernel, x, self.weight, self.bias)


def multiply(kernel: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias), all of weight's dtype (bf16 or float32) on the CPU, weight contiguous
    (n x d, d a multiple of 8)."""
    n, d = weight.shape
    flat = x.reshape(-1, d).contiguous()
    out = torch.empty(flat.shape[0], n, dtype=weight.dtype)
    b = None if bias is None else bias.detach().contiguous()
    failed = getattr(kernel, ENTRY[weight.dtype])(flat.data_ptr(), weight.data_ptr(), None if b is None else b.data_ptr(),
                                                  out.data_ptr(), flat.shape[0], n, d, torch.get_num_threads())
    if failed:
        raise MemoryError(f"speckv's linear kernel could not allocate {flat.shape[0]} x {d} floats")
    return out.reshape(*x.shape[:-1], n)


def eligible(layer: torch.nn.Module, kind: type = torch.nn.Linear) -> bool:
    """A `kind` layer whose weight (and bias) the kernel can read as they are: bf16 or float32, on
    the CPU, contiguous, rows a multiple of 8 long. Checked again at every call: a model moved or
    cast after loading falls back to torch's forward."""
    w, b = getattr(layer, "weight", None), getattr(layer, "bias", None)
    return (type(layer) is kind and w is not None and w.dtype in ENTRY and w.device.type == "cpu"
            and w.is_contiguous() and w.shape[1] % 8 == 0 and (b is None or b.dtype == w.dtype))


def install(model: torch.nn.Module) -> int:
    """Give every eligible Linear of `model` the kernel, where this CPU runs its dtype faster than
    torch (models/cpu_kernels.py times both); returns how many layers now use it."""
    from speckv.models import cpu_kernels

    layers = [m for m in model.modules() if eligible(m)]
    paying = {dtype for dtype in {m.weight.dtype for m in layers} if cpu_kernels.linear_pays(dtype)}
    if not paying or (lib := kernel()) is None:
        return 0
    layers = [m for m in layers if m.weight.dtype in paying]
    for layer in layers:
        layer.__class__ = CpuLinear  # the same object, weights and ties untouched: only forward changes
        layer.kernel = lib
    return len(layers)


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled kernel, checked against torch on a small product of each dtype; None where it
    cannot be built or run here (not x86-64 with AVX2, no C compiler, a compiler that rejects the
    flags, a cache it cannot write)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or torch.backends.cpu.get_cpu_capability() not in (
            "AVX2", "AVX512"):
        return None
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError, SpeckvError):
        return None
    for entry in ENTRY.values():
        getattr(lib, entry).restype = ctypes.c_int
        getattr(lib, entry).argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4
    return lib if all(_agrees(lib, dtype) for dtype in ENTRY) else None


def _agrees(lib: ctypes.CDLL, dtype: torch.dtype) -> bool:
    """The kernel's product equals a float32 product of the same numbers (to the dtype's rounding)."""
    g = torch.Generator().manual_seed(0)
    w, b, x = (torch.randn(*shape, generator=g).to(dtype) for shape in ((10, 24), (10,), (7, 24)))
    want = torch.nn.functional.linear(x.float(), w.float(), b.float()).to(dtype)
    return torch.allclose(multiply(lib, x, w, b).float(), want.float(), rtol=1e-2, atol=1e-2)


def _build() -> Path:
    """Compile cpu_linear.c once per source, compiler and flags; concurrent first uses wait on one lock."""
    from speckv.models.provision import cache_home

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler (cc)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((cc, *FLAGS)).encode()).hexdigest()[:16]
    directory = ensure_dir(cache_home() / "kernels")
    path = directory / f"cpu_linear-{key}.so"
    with wait_lock(directory / ".cpu_linear.lock", "compiling speckv's linear kernel"):
        if not path.exists():
            tmp = temp_path(path)
            try:
                subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp)], check=True, capture_output=True, timeout=120)
                os.replace(tmp, path)
            finally:
                remove(tmp)
    return path
