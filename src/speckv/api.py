"""The Python API: `speckv.load(...)` returns a Decoder with `generate` and `stream`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from speckv.control import Controller, Setup, make_controller, precheck
from speckv.engine import Engine, SamplingConfig
from speckv.errors import SpeckvError
from speckv.measure.records import Stats, StepRecord
from speckv.models.compress import Compression
from speckv.models.load import LoadedModel, load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET


@dataclass
class Result:
    text: str
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens only
    steps: list[StepRecord]
    stats: Stats
    finish_reason: str  # "eos", "length" or "stop"

    def to_json(self) -> dict:
        return {
            "prompt_ids": self.prompt_ids,
            "token_ids": self.token_ids,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "stats": self.stats.to_dict(),
        }


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that could still grow into a stop string."""
    return max((n for s in stops for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), default=0)


@dataclass
class _Run:
    """Mutable state of one generation, shared by generate() and stream()."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str = "length"
    prefill_ms: float = 0.0


def _check_tokenizers(target: LoadedModel, draft: LoadedModel) -> None:
    if target.tokenizer.get_vocab() != draft.tokenizer.get_vocab():
        raise SpeckvError(
            f"draft {draft.name} and target {target.name} use different tokenizers; "
            "speculative decoding needs a shared vocabulary"
        )


class Decoder:
    """A loaded target (+ draft) and a default controller; batch size 1."""

    def __init__(self, target: LoadedModel, draft: LoadedModel | None, controller: str | Controller | None = None):
        if draft is not None:
            _check_tokenizers(target, draft)
        self.target = target
        self.draft = draft
        self.tokenizer = target.tokenizer
        #: selects trained controller artifacts and calibrated costs for this pair
        self.setup = Setup(target.name, draft.name if draft else "-", target.compression,
                           draft.compression if draft else "-", target.model.device.type)
        controller = controller or ("auto" if draft else "autoregressive")
        self.controller = self.make_controller(controller) if isinstance(controller, str) else controller
        self.engine = Engine(target.model, draft.model if draft else None)
        eos = target.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.stop_ids = frozenset(eos)

    def make_controller(self, spec: str) -> Controller:
        controller = make_controller(spec, self.setup)
        if controller.uses_draft and self.draft is None:
            raise SpeckvError(f"controller {controller.name} needs a draft model")
        return controller

    def encode(self, prompt: str, raw: bool = False) -> list[int]:
        """Token ids for a prompt; through the chat template unless raw."""
        if not prompt or not prompt.strip():
            raise SpeckvError("empty prompt")
        if raw or not self.tokenizer.chat_template:
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]

    def _run(
        self,
        prompt: str | list[int],
        run: _Run | None,
        *,
        max_new_tokens: int = 128,
        stop: list[str] | None = None,
        raw: bool = False,
        controller: str | Controller | None = None,
        **sampling,
    ) -> Iterator[str]:
        config = SamplingConfig(**sampling)
        ctrl = self.make_controller(controller) if isinstance(controller, str) else (controller or self.controller)
        ids = list(prompt) if isinstance(prompt, list) else self.encode(prompt, raw)
        stops = [s for s in (stop or []) if s]
        run.prompt_ids = ids
        events = self.engine.run(ids, ctrl, config, max_new_tokens, self.stop_ids, self.target.max_context)
        for event in events:
            run.prefill_ms += event.prefill_ms
            run.steps.append(event.record)
            run.token_ids += event.tokens
            if event.finished:
                run.finish_reason = event.finished
            run.text = self.tokenizer.decode(run.token_ids, skip_special_tokens=True)
            cut = min((i for s in stops if (i := run.text.find(s)) >= 0), default=-1)
            if cut >= 0:
                run.text, run.finish_reason = run.text[:cut], "stop"
                while run.token_ids and len(self.tokenizer.decode(run.token_ids[:-1], skip_special_tokens=True)) >= cut:
                    run.token_ids.pop()
                yield run.text[run.emitted:]
                events.close()
                return
            safe = len(run.text) - _held_back(run.text, stops)
            if run.text[:safe].endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
                safe -= 1
            if event.finished:
                safe = len(run.text)
            if safe > run.emitted:
                yield run.text[run.emitted:safe]
                run.emitted = safe

    def generate(self, prompt: str | list[int], **kwargs) -> Result:
        """Generate for one prompt (text, or token ids used as-is). kwargs: max_new_tokens, stop,
        raw, controller, and transformers' sampling names do_sample/temperature/top_k/top_p/seed."""
        run = _Run([])
        t0 = time.perf_counter()
        for _ in self._run(prompt, run, **kwargs):
            pass
        wall = time.perf_counter() - t0
        stats = Stats.from_steps(run.steps, len(run.token_ids), wall, run.prefill_ms)
        return Result(run.text, run.prompt_ids, run.token_ids, run.steps, stats, run.finish_reason)

    def stream(self, prompt: str | list[int], **kwargs) -> Iterator[str]:
        """Yield text pieces as soon as they are final (same kwargs as generate)."""
        yield from self._run(prompt, _Run([]), **kwargs)


def load(
    target: str = DEFAULT_TARGET,
    draft: str | None = DEFAULT_DRAFT,
    dtype: str = "bfloat16",
    controller: str = "auto",
    device: str = "auto",
    compression: str | None = None,
    draft_compression: str | None = None,
) -> Decoder:
    """Load (provisioning if needed) a target and draft; draft=None gives the target alone.

    dtype sets both models; compression (fp32|bf16|fp16|int8|nf4) overrides it for the target
    and draft_compression for the draft. Losslessness is relative to the compressed target."""
    precheck(controller)  # fail on a bad controller before loading gigabytes
    target_level = Compression.parse(compression or dtype).level
    draft_level = Compression.parse(draft_compression or dtype).level
    target_model = load_model(target, target_level, device)
    draft_model = load_model(draft, draft_level, device) if draft else None
    return Decoder(target_model, draft_model, controller)
