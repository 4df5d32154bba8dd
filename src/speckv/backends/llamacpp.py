"""The llama.cpp backend: GGUF models through llama-cpp-python's C API, behind backends.base.

llama.cpp is what CPU users run: its Q4_K_M kernels read a quarter of bf16's bytes, so a target
forward costs about a tenth of transformers' here. We drive its C API directly (batch, decode,
logits, memory) rather than the `Llama` class, because speculation needs exactly three things
that class hides: logits for chosen rows of a batch, truncating the cache to any length, and one
cache per run.

Invariants:
- One llama context per Sequence (its own KV cache, one sequence id). Contexts are pooled per
  runner: a closed sequence's context is cleared before the next run gets it, so runs never see
  each other's cache, and a server does not allocate a KV cache per request.
- A batch flags as outputs only the last `rows` tokens fed, so llama.cpp computes the LM head for
  those rows only (the verification's k + 1, the draft's 1).
- Threads: physical cores unless told (llama.cpp's threads spin; one per hyperthread slows it).
- Levels are GGUF types: a built-in model's native Q4_K_M file as it is; q8_0, bf16, f16, f32
  made once with llama.cpp's own quantizer (up-conversions of the same values) and cached.
- Ctrl-C is never lost: llama.cpp calls back into Python to log (about six times per decoded
  token), and an interrupt handled inside that callback would be printed and dropped by ctypes
  while generation ran on. Our SIGINT handler (installed over Python's default, main thread only)
  notes an interrupt that lands there instead of raising, and the llama.cpp call raises it once
  it returns (`_interruptible`).
- f32 is the exact level: its contexts keep the KV cache in f32 and run attention without flash
  attention, so a k-token forward matches k one-token forwards to float rounding (1e-5; with the
  default f16 cache and flash attention logits move by up to 0.15 and quantized levels by ~0.8,
  benchmarks/results/llamacpp_exactness.json). Every other level runs llama.cpp's defaults, as
  users run it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speckv.errors import SpeckvError

#: level -> llama_ftype (llama.h): what `--compression` means on this backend
LEVELS = {"q4_k_m": 15, "q8_0": 7, "bf16": 32, "f16": 1, "f32": 0}
ALIASES = {"fp32": "f32", "float32": "f32", "fp16": "f16", "float16": "f16", "bfloat16": "bf16", "q4": "q4_k_m",
           "native": "native"}
NATIVE = "native"  # the GGUF as it is
DEFAULT_CONTEXT = 8192  # tokens of KV cache per sequence (prompt + output + draft)
BATCH = 2048  # tokens per llama_decode call; longer feeds are split


_QUIET = []  # the ctypes log callback must outlive every call into llama.cpp
_SIGINTS = [0]  # interrupts seen by _on_sigint (process-wide, as signals are)


def _drop_log(level, text, data) -> None:
    """llama.cpp's log callback: drops every line."""


def _on_sigint(signum, frame) -> None:
    """Python's default SIGINT handler, except inside the log callback, where ctypes would drop
    the KeyboardInterrupt: there the interrupt is only counted, and `_interruptible` raises it."""
    _SIGINTS[0] += 1
    if frame is not None and frame.f_code is _drop_log.__code__:
        return
    signal.default_int_handler(signum, frame)


@contextmanager
def _interruptible():
    """Around a llama.cpp call: an interrupt that landed in its log callback is raised after it."""
    before = _SIGINTS[0]
    yield
    if _SIGINTS[0] != before:
        raise KeyboardInterrupt


def lib():
    """llama_cpp, or a SpeckvError that says how to get it. llama.cpp's own log (hundreds of lines
    per model load, some at error level for harmless vocabulary quirks) is dropped: what fails
    reaches the user as a return code we turn into one `speckv: error:` line."""
    try:
        import llama_cpp
        import llama_cpp._logger  # noqa: F401  (imported first: it installs its own callback)
    except ImportError:
        raise SpeckvError("the llama.cpp backend needs llama-cpp-python: run scripts/setup.sh "
                          "(or pip install llama-cpp-python)") from None
    if not _QUIET:
        _QUIET.append(llama_cpp.llama_log_callback(_drop_log))
        llama_cpp.llama_log_set(_QUIET[0], ctypes.c_void_p(0))
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    return llama_cpp


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def parse_level(level: str) -> str:
    """A llama.cpp level (q4_k_m, q8_0, bf16, f16, f32, native) from a spelling users type."""
    name = str(level).strip().lower()
    name = ALIASES.get(name, name)
    if name != NATIVE and name not in LEVELS:
        raise SpeckvError(f"unknown compression {level!r} on llama.cpp; choose {', '.join(LEVELS)} or native "
                          "(int8 and nf4 are transformers' levels: use q8_0 or q4_k_m, or --backend torch)")
    return name


def physical_cores() -> int:
    """Cores, not hyperthreads: what llama.cpp's spinning threads should number."""
    try:
        pairs = set()
        block = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if not line.strip():
                if "core id" in block:
                    pairs.add((block.get("physical id"), block["core id"]))
                block = {}
                continue
            key, _, value = line.partition(":")
            block[key.strip()] = value.strip()
        if pairs:
            return min(len(pairs), len(os.sched_getaffinity(0)))
    except (OSError, AttributeError):
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def quantize(source: Path, dest: Path, level: str, threads: int) -> None:
    """Write `source` at `level` to `dest` with llama.cpp's quantizer (allow_requantize: the
    built-in files are Q4_K_M already, so q8_0/bf16/f16/f32 hold the same values in more bytes)."""
    L = lib()
    params = L.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = LEVELS[level]
    params.allow_requantize = True
    with _interruptible():
        rc = L.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0 or not dest.is_file():
        raise SpeckvError(f"llama.cpp could not write {source.name} at {level} (code {rc})")


@dataclass
class _Context:
    ptr: object  # llama_context *
    batch: object  # llama_batch of BATCH tokens
    token: np.ndarray  # views over the batch's arrays
    pos: np.ndarray
    flags: np.ndarray


class LlamaSequence:
    """One run's cache: a pooled llama context holding the first `len(self)` tokens."""

    def __init__(self, runner: LlamaRunner, ctx: _Context):
        self.runner, self.ctx, self.length = runner, ctx, 0

    def __len__(self) -> int:
        return self.length

    def forward(self, tokens: list[int], rows: int, vocab: int) -> torch.Tensor:
        L, ctx = self.runner.lib, self.ctx
        if self.length + len(tokens) > self.runner.max_context:
            raise SpeckvError(f"{self.length + len(tokens)} tokens exceed the llama.cpp context of "
                              f"{self.runner.max_context} (load with a larger context)")
        out = []
        first_out = len(tokens) - rows
        for start in range(0, len(tokens), BATCH):
            chunk = tokens[start:start + BATCH]
            n = len(chunk)
            ctx.token[:n] = chunk
            ctx.pos[:n] = np.arange(self.length, self.length + n)
            ctx.flags[:n] = np.arange(start, start + n) >= first_out
            ctx.batch.n_tokens = n
            with _interruptible():
                rc = L.llama_decode(ctx.ptr, ctx.batch)
            if rc != 0:
                raise SpeckvError(f"llama.cpp decode failed (code {rc}) at {self.length} + {n} tokens")
            self.length += n
            k = int(ctx.flags[:n].sum())
            if k:
                logits = np.ctypeslib.as_array(L.llama_get_logits(ctx.ptr), shape=(k, self.runner.vocab))
                out.append(torch.from_numpy(logits[:, :vocab].copy()))  # llama.cpp reuses the buffer
        return out[0] if len(out) == 1 else torch.cat(out)

    def truncate(self, length: int) -> None:
        if length < self.length:
            L = self.runner.lib
            L.llama_memory_seq_rm(L.llama_get_memory(self.ctx.ptr), 0, length, -1)
            self.length = length

    def evict(self, start: int, count: int) -> bool:
        """Drop `count` entries from `start` and move the later ones down by `count` (llama.cpp's
        own context shift: the keys are re-rotated in place). False, and nothing changed, where
        the model's cache cannot shift."""
        L = self.runner.lib
        mem = L.llama_get_memory(self.ctx.ptr)
        if count <= 0 or start + count > self.length or not L.llama_memory_can_shift(mem):
            return False
        L.llama_memory_seq_rm(mem, 0, start, start + count)
        L.llama_memory_seq_add(mem, 0, start + count, -1, -count)
        self.length -= count
        return True

    def close(self) -> None:
        if self.ctx is not None:
            self.runner._release(self.ctx)
            self.ctx = None


class LlamaRunner:
    """A GGUF model loaded by llama.cpp on the CPU."""

    backend = "llamacpp"
    device = torch.device("cpu")
    trees = False  # one sequence per context here: tree steps fall back to chains (benchmarks/tree_costs.py)

    def __init__(self, path: Path, threads: int | None = None, context: int = DEFAULT_CONTEXT, exact: bool = False):
        self.lib = L = lib()
        L.llama_backend_init()
        params = L.llama_model_default_params()
        params.n_gpu_layers = 0
        self.path = path
        with _interruptible():
            self._model = L.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise SpeckvError(f"llama.cpp cannot read the GGUF file {path}")
        self._vocab = L.llama_model_get_vocab(self._model)
        self.vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.max_context = min(int(context), int(L.llama_model_n_ctx_train(self._model)))
        self.threads = int(threads or physical_cores())
        self.exact = exact
        self.eos_ids = tuple(t for t in range(self.vocab) if L.llama_vocab_is_eog(self._vocab, t))
        self._free: list[_Context] = []
        self._all: list[_Context] = []

    def describe(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self.lib.llama_model_desc(self._model, buf, 256)
        return buf.value.decode(errors="replace")

    def memory_bytes(self) -> int:
        return int(self.lib.llama_model_size(self._model))

    def sequence(self) -> LlamaSequence:
        return LlamaSequence(self, self._free.pop() if self._free else self._new_context())

    def _new_context(self) -> _Context:
        L = self.lib
        params = L.llama_context_default_params()
        params.n_ctx = self.max_context
        params.n_batch = BATCH
        params.n_ubatch = 512
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = True
        if self.exact:  # f32 cache, plain attention: batched and one-token forwards round alike
            params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
            params.type_k = params.type_v = L.GGML_TYPE_F32
        with _interruptible():
            ptr = L.llama_init_from_model(self._model, params)
        if not ptr:
            raise SpeckvError(f"llama.cpp could not make a context of {self.max_context} tokens (out of memory?)")
        batch = L.llama_batch_init(BATCH, 0, 1)
        for i in range(BATCH):
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
        ctx = _Context(ptr, batch, np.ctypeslib.as_array(batch.token, shape=(BATCH,)),
                       np.ctypeslib.as_array(batch.pos, shape=(BATCH,)),
                       np.ctypeslib.as_array(batch.logits, shape=(BATCH,)))
        self._all.append(ctx)
        return ctx

    def _release(self, ctx: _Context) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(ctx.ptr), True)
        self._free.append(ctx)

    def __del__(self):
        L = getattr(self, "lib", None)
        if L is None or not getattr(self, "_model", None):
            return
        for ctx in getattr(self, "_all", []):
            L.llama_batch_free(ctx.batch)
            L.llama_free(ctx.ptr)
        L.llama_model_free(self._model)
        self._model = None
