"""Whether this CPU multiplies int8 and NF4 matrices faster than bf16 ones, and bf16 and float32 ones
faster with our kernel than with torch: timed, not assumed.

The fast paths of the libraries need AVX-512: torch's `_int_mm` falls back to scalar code without
it, and bitsandbytes registers its native NF4 kernel only on AVX-512 BF16 CPUs, dequantizing the
whole weight on every call elsewhere. Measured on an AVX2 EPYC (2 cores): one Qwen2.5-Coder-0.5B
draft token took 1.6 s at NF4 against 105 ms at bf16, and the int8 LM head made a bf16 draft token
slower (185 against 105 ms); on the AVX-512 machine of earlier sessions the same two made it
cheaper (49 and 25 ms). So the choices that lean on them (the draft's default level, its int8
head) ask here first: one matrix-vector product shaped like a slice of a draft's LM head (memory
bound, where a quantized weight should win), best of three, once per process (about 0.3 s).

Invariants: a check never raises (a library that cannot run the product counts as slow); the
answer is cached per process, so a Decoder built twice decides the same way.
"""

from __future__ import annotations

import functools
import time

import torch

ROWS, COLS = 8192, 896  # a slice of Qwen2.5-Coder-0.5B's LM head: 15 MB in bf16
#: how much slower than bf16 a quantized product may be and still count as fast (its smaller
#: weight still saves memory; on the AVX2 EPYC the fallbacks took about 15x the bf16 time: int8 17 against
#: 1.1 ms at this shape, NF4 7.9 against 0.54 ms on a 4096 x 1024 weight)
TOLERANCE = 1.5


def _best_ms(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


@functools.cache
def _bf16_ms() -> float:
    w = torch.full((ROWS, COLS), 0.5, dtype=torch.bfloat16)  # (the values do not change the time)
    x = torch.full((1, COLS), 0.5, dtype=torch.bfloat16)
    return _best_ms(lambda: x @ w.t())


@functools.cache
def int8_pays() -> bool:
    """An int8 x int8 product (torch._int_mm) at most TOLERANCE times the bf16 one's time."""
    try:
        w = torch.full((COLS, ROWS), 3, dtype=torch.int8)
        x = torch.full((1, COLS), 3, dtype=torch.int8)
        return _best_ms(lambda: torch._int_mm(x, w)) <= TOLERANCE * _bf16_ms()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@functools.cache
def nf4_pays() -> bool:
    """bitsandbytes' NF4 matrix-vector product at most TOLERANCE times the bf16 one's time."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F

        w = torch.linspace(-1, 1, ROWS * COLS, dtype=torch.bfloat16).reshape(ROWS, COLS)
        q, state = F.quantize_4bit(w, quant_type="nf4", quant_storage=torch.uint8)
        x = torch.full((1, COLS), 0.5, dtype=torch.bfloat16)
        return _best_ms(lambda: bnb.matmul_4bit(x, q.t(), quant_state=state)) <= TOLERANCE * _bf16_ms()
    except Exception:  # noqa: BLE001 - any failure of the library means: do not lean on it
        return False


#: a verification's width (8 drafts + the bonus row) and a weight shaped like a slice of a target's
#: MLP (12 MB in bf16): our linear kernel must beat torch there by SPEEDUP, and not lose at one row
VERIFY_ROWS, VERIFY_SHAPE, SPEEDUP = 9, (4096, 1536), 1.25


@functools.cache
def linear_pays(dtype: torch.dtype) -> bool:
    """Our linear kernel (models/cpu_linear.py) clearly faster than torch's product of `dtype` (bf16
    or float32) at a verification's width and not slower at one row: so on CPUs without bf16
    arithmetic (AVX2: measured 2.25 against 6.6 ms at this shape in bf16) and not where torch has a
    native path."""
    from speckv.models import cpu_linear

    try:
        lib = cpu_linear.kernel()
        if lib is None or dtype not in cpu_linear.ENTRY:
            return False
        w = torch.full(VERIFY_SHAPE, 0.5, dtype=dtype)
        wide, one = (torch.full((k, VERIFY_SHAPE[1]), 0.5, dtype=dtype) for k in (VERIFY_ROWS, 1))
        ours = [_best_ms(lambda x=x: cpu_linear.multiply(lib, x, w, None)) for x in (wide, one)]
        theirs = [_best_ms(lambda x=x: torch.nn.functional.linear(x, w)) for x in (wide, one)]
        return ours[0] * SPEEDUP <= theirs[0] and ours[1] <= theirs[1] * SPEEDUP
    except Exception:  # noqa: BLE001 - a kernel that cannot run here means: torch's layers stay
        return False
