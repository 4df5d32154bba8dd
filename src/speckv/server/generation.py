"""The server's view of a Decoder: request -> prompt ids -> a step-by-step generation -> usage.

`Generation` wraps `Decoder.stream` (the very loop `Decoder.generate` drains), so greedy text and
token ids through the server are exactly `Decoder.generate`'s; its `result()` gives the finish
reason, token counts and step records for usage and metrics.

Invariant: everything here runs on the worker thread (tokenizer, controllers and models are not
shared with the event loop).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from speckv import api
from speckv.engine import SamplingConfig
from speckv.records import Stats, StepRecord
from speckv.server.protocol import ChatRequest, CompletionRequest

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's finish_reason


@dataclass
class Summary:
    """What a finished generation reports: OpenAI usage plus our extension."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # OpenAI's: "stop" or "length"
    stats: Stats
    steps: list[StepRecord]
    controller: str
    queue_s: float = 0.0

    def usage(self) -> dict:
        s = self.stats
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "speckv": {
                "controller": self.controller,
                "steps": s.steps,
                "drafted": sum(r.drafted for r in self.steps),
                "accepted": sum(r.accepted for r in self.steps),
                "mean_accepted": round(s.mean_accepted, 4),
                "tokens_per_s": round(s.tokens_per_s, 3),
                "wall_s": round(s.wall_s, 4),
                "prefill_ms": round(s.prefill_ms, 2),
                "queue_s": round(self.queue_s, 4),
            },
        }


class Generation:
    """One request's run: iterate for text pieces (each after one or more engine steps), then
    `summary()`. `close()` stops it between steps."""

    def __init__(self, decoder: api.Decoder, ids: list[int], controller, kwargs: dict):
        """controller: a Controller for this request, or None for the Decoder's default."""
        self.controller = (controller or decoder.controller).name
        self.prompt_tokens = len(ids)
        self._stream = decoder.stream(ids, controller=controller, **kwargs)

    def __iter__(self) -> Iterator[str]:
        return self._stream

    def close(self) -> None:
        self._stream.close()

    def summary(self, queue_s: float = 0.0) -> Summary:
        result = self._stream.result()
        return Summary(len(result.prompt_ids), len(result.token_ids), FINISH.get(result.finish_reason, "length"),
                       result.stats, result.steps, self.controller, queue_s)


class DecoderBackend:
    """Turns validated requests into prompt ids and Generations for one loaded Decoder."""

    def __init__(self, decoder: api.Decoder):
        self.decoder = decoder

    @property
    def default_controller(self) -> str:
        return self.decoder.controller.name

    def prompt_ids(self, request: ChatRequest | CompletionRequest) -> list[int]:
        """Chat: the tokenizer's chat template over every turn; completions: the raw text (or ids)."""
        if isinstance(request, ChatRequest):
            return self.decoder.prepare(self.decoder.encode_chat([m.as_template_turn() for m in request.messages]))
        return self.decoder.prepare(request.prompt, raw=True)  # raw text, or token ids checked like the API's

    def start(self, request: ChatRequest | CompletionRequest) -> Generation:
        """Validate everything that needs the loaded models, then begin (no step taken yet)."""
        ids = self.prompt_ids(request)
        kwargs = request.decode_kwargs()
        SamplingConfig(**{k: kwargs[k] for k in ("do_sample", "temperature", "top_p", "top_k", "seed")})
        controller = self.decoder.make_controller(request.controller) if request.controller else None
        return Generation(self.decoder, ids, controller, kwargs)
