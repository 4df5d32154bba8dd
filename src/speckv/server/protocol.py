"""OpenAI request and response shapes, as far as one batch-size-1 speculative decoder honours them.

Invariants:
- A request that validates here maps onto `Decoder.generate` kwargs without further checks, except
  those that need the loaded models (prompt length, token ids in the vocabulary, the chat template,
  trained controller artifacts), which the worker makes before it reports a request as started.
- A request never names a file: controllers that load artifacts are accepted by bare name only.
- Fields that would change the output but that we cannot honour (n > 1, logprobs, tools, penalties,
  logit_bias, non-text response formats, echo, suffix) are rejected with 400, never silently ignored;
  other unknown fields are ignored, as OpenAI-compatible servers do.
- Defaults follow OpenAI: temperature 1 (sampling); temperature 0 is greedy (exact target output).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from speckv.control import ControllerSpec
from speckv.data.prompts import check_unicode
from speckv.errors import SpeckvError

#: tokens generated when a request names no max_tokens (OpenAI's default, "up to the context",
#: would tie the single worker up for minutes on a CPU)
DEFAULT_MAX_TOKENS = 512


def _valid_text(text: str) -> str:
    """JSON may carry a lone UTF-16 surrogate ("\\ud800"); tokenizers cannot encode it. pydantic
    turns a ValueError into our 400."""
    try:
        check_unicode(text, "text")
    except SpeckvError as exc:
        raise ValueError(str(exc)) from None
    return text


class TextPart(BaseModel):
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return _valid_text(value)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value):
        return _valid_text(value) if isinstance(value, str) else value

    def as_template_turn(self) -> dict[str, str]:
        """The dict a chat template expects; OpenAI's newer "developer" role is a system turn."""
        if isinstance(self.content, list):
            text = "\n".join(p.text for p in self.content)  # how vLLM joins text parts
        else:
            text = self.content or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None  # None: the served model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch's generator takes
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # extensions (vLLM spells top_k the same way)
    top_k: int | None = Field(None, ge=1)
    controller: str | None = Field(None, min_length=1, description="speckv controller spec, e.g. fixed:4")

    @field_validator("controller")
    @classmethod
    def _known_controller(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                spec = ControllerSpec.parse(value)  # names and arguments; trained artifacts are checked by the worker
            except SpeckvError as exc:
                raise ValueError(str(exc)) from None
            if spec.artifact is not None:  # a path: clients must not make us read files
                raise ValueError(f"controller {spec.name} takes no artifact path over HTTP; "
                                 f"use {spec.name} (the trained one) or start the server with --controller {value}")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        return [_valid_text(s) for s in ([value] if isinstance(value, str) else list(value or []))]

    def _unsupported(self) -> dict[str, bool]:
        return {
            "n": self.n != 1,
            "presence_penalty": self.presence_penalty != 0,
            "frequency_penalty": self.frequency_penalty != 0,
            "logit_bias": bool(self.logit_bias),
        }

    @model_validator(mode="after")
    def _check_unsupported(self):
        for name, bad in self._unsupported().items():
            if bad:
                raise ValueError(f"{name} is not supported by this server (one greedy or sampled sequence per request)")
        return self

    @property
    def token_limit(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    def decode_kwargs(self) -> dict[str, Any]:
        """`Decoder.generate` keyword arguments (controller and prompt excluded)."""
        sample = self.temperature > 0
        return {
            "max_new_tokens": self.token_limit,
            "stop": self.stop,
            "do_sample": sample,
            "temperature": self.temperature if sample else 1.0,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
        }


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def _unsupported(self) -> dict[str, bool]:
        fmt = (self.response_format or {}).get("type", "text")
        return {**super()._unsupported(), "logprobs": self.logprobs, "tools": bool(self.tools),
                "response_format": fmt != "text"}

    @property
    def token_limit(self) -> int:  # OpenAI's newer name wins over the deprecated max_tokens
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = Field(description="one prompt: text, or token ids used as-is")
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's legacy completions default
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and value and isinstance(value[0], str):
            if len(value) != 1:
                raise ValueError("batched prompts are not supported: send one prompt per request")
            value = value[0]
        if isinstance(value, list) and (not value or any(i < 0 for i in value)):
            raise ValueError("token-id prompts must be a non-empty list of non-negative ids")
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty prompt")
        return _valid_text(value) if isinstance(value, str) else value

    def _unsupported(self) -> dict[str, bool]:
        return {**super()._unsupported(), "logprobs": self.logprobs is not None, "echo": self.echo,
                "suffix": bool(self.suffix), "best_of": self.best_of not in (None, 1)}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict:
    """OpenAI's error shape; clients read error.message and error.type."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
