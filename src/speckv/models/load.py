"""Load a provisioned model at a compression level on the run-time device."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from speckv.backends import Runner, as_runner
from speckv.errors import SpeckvError
from speckv.models import cpu_linear
from speckv.models.compress import Compression
from speckv.models.provision import model_path
from speckv.models.registry import BUILTIN


@dataclass
class LoadedModel:
    """A model, its tokenizer and what it was loaded as. `model` is a transformers model (torch
    backend) or a backend's Runner (llama.cpp); `runner` is what the engine drives either way."""

    name: str
    path: Path
    model: object
    tokenizer: object
    compression: str = "bf16"

    @cached_property
    def runner(self) -> Runner:
        return as_runner(self.model)

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def module(self) -> torch.nn.Module:
        """The torch model, for what only transformers can do (its own generation methods, a
        reduced draft head)."""
        if self.backend != "torch":
            raise SpeckvError(f"{self.name} runs on {self.backend}; this needs the transformers backend (--backend torch)")
        return self.model

    @property
    def max_context(self) -> int:
        return self.runner.max_context

    def eos_ids(self) -> frozenset[int]:
        """Ids that end a generation: the model's (generation config, or llama.cpp's end-of-generation
        tokens) and the tokenizer's eos."""
        if self.backend == "torch":
            eos = self.model.generation_config.eos_token_id
            ids = {eos} if isinstance(eos, int) else set(eos or [])
        else:
            ids = set(self.runner.eos_ids)
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)


DEVICES = ("cpu", "cuda", "mps")  # where a model can run (torch also parses meta, xla, ...: not here)


def pick_device(device: str = "auto") -> torch.device:
    """CUDA when present, else CPU: one code path, device chosen at run time. Anything else
    (tpu, meta, cuda:7 on a one-GPU machine) fails here, before a model is loaded."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "choose auto, cpu, cuda or cuda:N"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SpeckvError(f"unknown device {device!r}; {choices}") from None
    if dev.type not in DEVICES:
        raise SpeckvError(f"unsupported device {device!r}; {choices}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpeckvError(f"--device {device} requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpeckvError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SpeckvError(f"--device {device} requested but MPS is not available")
    return dev


BACKENDS = ("auto", "torch", "llamacpp")


def pick_backend(backend: str = "auto", device: str = "auto", models: tuple[str | None, ...] = (),
                 torch_only: str | None = None) -> str:
    """`auto`: llama.cpp on CPU when llama-cpp-python is installed (what CPU users run: about 3x
    transformers' speed here), transformers otherwise: on CUDA, for a Hugging Face directory among
    `models`, and when the run asks for something only transformers does (`torch_only` names it).
    Refused before any load."""
    from speckv.backends import llamacpp

    if backend not in BACKENDS:
        raise SpeckvError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    dev = pick_device(device)
    gguf = all(m in BUILTIN or str(m).endswith(".gguf") for m in models if m)
    if backend == "auto":
        return "llamacpp" if dev.type == "cpu" and llamacpp.available() and gguf and not torch_only else "torch"
    if backend == "llamacpp":
        if torch_only:
            raise SpeckvError(f"{torch_only} needs the transformers backend (--backend torch)")
        llamacpp.lib()
        if dev.type != "cpu":
            raise SpeckvError(f"the llama.cpp backend runs on the CPU here (got --device {device}); use --backend torch")
    return backend


def parse_level(level: str | None, backend: str) -> str:
    """A compression level for the backend (None: its default: bf16 for transformers, the GGUF as
    it is for llama.cpp), refused before any model loads if the installed libraries cannot run it."""
    from speckv.backends import llamacpp

    if backend == "llamacpp":
        return llamacpp.parse_level(level or llamacpp.NATIVE)
    return Compression.parse(level or "bf16").require().level


def load_model(name_or_path: str, compression: str | None = "bf16", device: str = "auto",
               backend: str = "torch") -> LoadedModel:
    """compression: fp32|bf16|fp16|int8|nf4 (float32/bfloat16/float16 accepted as aliases) on
    transformers; q4_k_m|q8_0|bf16|f16|f32|native on llama.cpp."""
    if backend != "torch":
        return _load_llamacpp(name_or_path, parse_level(compression, pick_backend(backend, device)))
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = Compression.parse(compression or "bf16")
    dev = pick_device(device)
    path = model_path(name_or_path)
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **level.load_kwargs(dev))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise SpeckvError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from exc
    except SafetensorError as exc:  # a damaged weight file
        raise SpeckvError(f"{_bad_weights(path)}: not a readable safetensors file ({exc}); replace or re-download it") from None
    if not level.quantized:  # bitsandbytes places quantized weights itself (device_map)
        model.to(dev)
    model.eval()
    if not level.quantized:  # our kernel for the CPU layers of the dtypes it runs, where it is faster than torch here
        cpu_linear.install(model)
    return LoadedModel(name=name_or_path, path=path, model=model, tokenizer=tokenizer, compression=level.level)


def _load_llamacpp(name_or_path: str, level: str) -> LoadedModel:
    from speckv.backends.llamacpp import LlamaRunner
    from speckv.models.provision import gguf_path, gguf_tokenizer, gguf_variant

    if level == "native" and name_or_path in BUILTIN:
        level = "q4_k_m"  # what the built-in files are: one name for one setup
    path = gguf_variant(name_or_path, level)
    tokenizer = gguf_tokenizer(gguf_path(name_or_path))  # the original file's: variants share it
    return LoadedModel(name=name_or_path, path=path, model=LlamaRunner(path, exact=level == "f32"), tokenizer=tokenizer,
                       compression=level)


def _bad_weights(path: Path) -> Path:
    """The first weight file under path that safetensors cannot open (else path itself)."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception:  # SafetensorError, OSError
            return f
    return path
