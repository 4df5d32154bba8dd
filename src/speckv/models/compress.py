"""Compression levels for a model: a float dtype, or bitsandbytes 8-bit / NF4 weights.

bitsandbytes runs both on CPU and on CUDA (torchao's int4 paths need CUDA, and its CPU NF4
was ~20x slower than bitsandbytes' in our first measurements). Quantized layers compute in
bfloat16. fp16 is meant for CUDA; on CPU it runs, slowly, and says so.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import torch

from speckv.errors import SpeckvError

ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
FLOAT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LEVELS = ("fp32", "bf16", "fp16", "int8", "nf4")


@dataclass(frozen=True)
class Compression:
    level: str

    @classmethod
    def parse(cls, name: str) -> Compression:
        level = ALIASES.get(name, name)
        if level not in LEVELS:
            raise SpeckvError(f"unknown compression {name!r}; choose from {', '.join(LEVELS)} (or float32/bfloat16)")
        return cls(level)

    @property
    def quantized(self) -> bool:
        return self.level in ("int8", "nf4")

    def require(self) -> Compression:
        """Refuse, before any model loads, a level the installed libraries cannot run."""
        if self.quantized:
            # At import, on AVX512-BF16 CPUs, bitsandbytes warns that an optional faster NF4 kernel
            # (downloaded from the Hugging Face hub by the `kernels` package) is missing; its own
            # kernel runs instead. Not actionable offline, and printed on every load: keep it quiet.
            logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise SpeckvError(f"compression {self.level} needs the bitsandbytes package (pip install bitsandbytes)") from None
        return self

    def load_kwargs(self, device: torch.device) -> dict:
        """Keyword arguments for from_pretrained that give this level on this device."""
        if self.level == "fp16" and device.type == "cpu":
            print("note: fp16 on CPU has no fast kernels here; it runs, slowly. Use bf16 on CPU.", file=sys.stderr)
        if not self.quantized:
            return {"dtype": FLOAT[self.level]}
        self.require()
        from transformers import BitsAndBytesConfig

        # bitsandbytes logs a warning on every 8-bit matmul that bf16 inputs are cast to fp16: tens of
        # thousands of lines per run, and time spent formatting them inside the timed loop.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        if self.level == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        return {"dtype": torch.bfloat16, "quantization_config": config, "device_map": str(device)}
