"""The server's view of a Decoder: request -> prompt ids -> a step-by-step generation -> usage.

Why not `Decoder.stream`: it yields text only, and the server also needs the finish reason, the
generated token count and the step records (usage, metrics). `Generation` drives the same per-run
loop that `Decoder.generate` and `Decoder.stream` share (`Decoder._run` over an `api._Run`), so
greedy text and token ids through the server are exactly `Decoder.generate`'s. This module is the
only place the server touches Decoder internals.

Invariant: everything here runs on the worker thread (tokenizer, controllers and models are not
shared with the event loop).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from speckv import api
from speckv.engine import SamplingConfig
from speckv.errors import SpeckvError
from speckv.measure.records import Stats, StepRecord
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
    `summary()`. `close()` stops it between steps (the engine's generator is closed)."""

    def __init__(self, decoder: api.Decoder, ids: list[int], controller, kwargs: dict):
        """controller: a Controller for this request, or None for the Decoder's default."""
        self.controller = (controller or decoder.controller).name
        self.prompt_tokens = len(ids)
        self._run = api._Run([])
        self._pieces = decoder._run(ids, self._run, controller=controller, **kwargs)
        self._t0 = time.perf_counter()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()

    def summary(self, queue_s: float = 0.0) -> Summary:
        run = self._run
        wall = time.perf_counter() - self._t0
        stats = Stats.from_steps(run.steps, len(run.token_ids), wall, run.prefill_ms)
        return Summary(len(run.prompt_ids), len(run.token_ids), FINISH.get(run.finish_reason, "length"),
                       stats, run.steps, self.controller, queue_s)


class DecoderBackend:
    """Turns validated requests into prompt ids and Generations for one loaded Decoder."""

    def __init__(self, decoder: api.Decoder):
        self.decoder = decoder

    @property
    def default_controller(self) -> str:
        return self.decoder.controller.name

    def prompt_ids(self, request: ChatRequest | CompletionRequest) -> list[int]:
        """Chat: the tokenizer's chat template over every turn; completions: the raw text (or ids)."""
        tok = self.decoder.tokenizer
        if isinstance(request, ChatRequest):
            if not getattr(tok, "chat_template", None):
                raise SpeckvError("this model has no chat template; use /v1/completions with a raw prompt")
            turns = [m.as_template_turn() for m in request.messages]
            try:
                ids = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"]
            except Exception as exc:  # jinja raises on turn orders a template refuses
                raise SpeckvError(f"the chat template rejected these messages: {exc}") from None
        elif isinstance(request.prompt, str):
            ids = self.decoder.encode(request.prompt, raw=True)
        else:
            vocab = len(tok.get_vocab())
            if max(request.prompt) >= vocab:
                raise SpeckvError(f"token id {max(request.prompt)} is outside the vocabulary (size {vocab})")
            ids = list(request.prompt)
        context = self.decoder.target.max_context
        if len(ids) >= context:
            raise SpeckvError(f"prompt has {len(ids)} tokens; the model's context is {context}")
        return ids

    def start(self, request: ChatRequest | CompletionRequest) -> Generation:
        """Validate everything that needs the loaded models, then begin (no step taken yet)."""
        ids = self.prompt_ids(request)
        kwargs = request.decode_kwargs()
        SamplingConfig(**{k: kwargs[k] for k in ("do_sample", "temperature", "top_p", "top_k", "seed")})
        controller = self.decoder.make_controller(request.controller) if request.controller else None
        return Generation(self.decoder, ids, controller, kwargs)
