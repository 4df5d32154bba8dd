"""Load a provisioned model with a dtype on the run-time device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from speckv.errors import SpeckvError
from speckv.models.provision import model_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: torch.nn.Module
    tokenizer: object

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))


def pick_device(device: str = "auto") -> torch.device:
    """CUDA when present, else CPU: one code path, device chosen at run time."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpeckvError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


def parse_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise SpeckvError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name_or_path: str, dtype: str = "bfloat16", device: str = "auto") -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = model_path(name_or_path)
    torch_dtype = parse_dtype(dtype)
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise SpeckvError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from exc
    model.to(pick_device(device)).eval()
    return LoadedModel(name=name_or_path, path=path, model=model, tokenizer=tokenizer)
