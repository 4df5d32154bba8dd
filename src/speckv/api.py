"""The Python API: `speckv.load(...)` returns a Decoder with `generate` and `stream`.

Invariants: a Decoder may be shared by threads and by suspended streams. Each run has its own
state (engine caches and drafter, a fresh controller: a deep copy of the default, or one made
from a spec), and one lock serializes the model work step by step, so runs interleave between
steps and give exactly their single-threaded output. No lock is held while a piece is yielded.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from speckv.control import Controller, ControllerSpec, Setup, cost_for, cost_path, make_controller
from speckv.data.prompts import check_unicode
from speckv.detok import Detokenizer
from speckv.drafting import DrafterSpec, parse_drafter
from speckv.drafting.chain import ChainSource
from speckv.drafting.context import NEVER, LongContext, auto_threshold
from speckv.engine import Engine, SamplingConfig
from speckv.errors import SpeckvError
from speckv.records import Stats, StepRecord
from speckv.models.compress import Compression
from speckv.models.draft import load_draft
from speckv.models.load import LoadedModel, load_model, parse_level, pick_backend, pick_device
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
    draft_prefill_ms: float = 0.0
    detok: Detokenizer | None = None  # the text of token_ids, decoded a few tokens at a time


def _stop_list(stop: str | list[str] | None) -> list[str]:
    """Stop strings as a list: one str is one stop string (not its characters)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise SpeckvError(f"stop must be a string or a list of strings (got {stop!r})")
    return [s for s in stop if s]


def _checked_controller(controller):
    """A spec (parsed here, so a bad one fails before anything loads) or a Controller object."""
    if isinstance(controller, (str, ControllerSpec)):
        ControllerSpec.parse(controller)
    elif not isinstance(controller, Controller):
        raise SpeckvError(f"controller must be a spec such as 'fixed:4' or a Controller (got {controller!r})")
    return controller


def _tree_needs_model(controller, has_model: bool) -> None:
    """Tree controllers grow trees from a draft model: refuse one without it, before any load."""
    trees = controller.trees if isinstance(controller, Controller) else ControllerSpec.parse(controller).trees
    if trees and not has_model:
        name = getattr(controller, "name", controller)
        raise SpeckvError(f"controller {name} drafts token trees from a draft model; this run loads none "
                          "(give --draft, and --drafter model or hybrid)")


def _check_long_context(spec, draft_backend: str | None) -> LongContext:
    """A long-context spec, refused where it cannot work: window and retrieval shape the draft
    model's cache, and retrieval moves entries between a transformers draft's caches (llama.cpp's
    are out of reach); there `auto` keeps its window and never turns retrieval on."""
    context = LongContext.parse(spec)
    if context.mode in ("window", "retrieval") and draft_backend is None:
        raise SpeckvError(f"--long-context {context.mode} shapes the draft model's cache; this run drafts without one")
    if context.mode == "retrieval" and draft_backend not in (None, "torch"):
        raise SpeckvError(f"--long-context retrieval needs the transformers backend (--backend torch); "
                          f"{draft_backend} keeps the draft's caches out of reach")
    if context.mode == "auto" and draft_backend not in (None, "torch"):
        return context.with_threshold(NEVER)
    return context


def _stale(path) -> bool:
    from speckv.measure.probe import stale

    return stale(path)


def _check_tokenizers(target: LoadedModel, draft: LoadedModel) -> None:
    if target.tokenizer.get_vocab() != draft.tokenizer.get_vocab():
        raise SpeckvError(
            f"draft {draft.name} and target {target.name} use different tokenizers; "
            "speculative decoding needs a shared vocabulary"
        )


class Decoder:
    """A loaded target (+ draft) and a default controller; batch size 1, safe to share (runs
    take turns step by step)."""

    def __init__(self, target: LoadedModel, draft: LoadedModel | None, controller: str | Controller | None = None,
                 drafter: str | DrafterSpec = "auto", probe: bool = False, long_context: str | LongContext | None = "auto"):
        """drafter: `auto` (hybrid with a draft model, else the target alone), `model` (the draft
        model's chain), `lookup[:N_MAX[:N_MIN]]` (prompt lookup: no draft model needed) or
        `hybrid[:N_MAX[:N_MIN]]` (the controller picks lookup or the model per step).
        probe: with no cost model for this setup yet, time a few forwards first (measure/probe.py)
        so that `auto` prices drafts at this machine's costs (speckv.load does this).
        long_context: what of a long prompt the draft model attends to (drafting/context.py): full,
        window, retrieval or auto (retrieval from a length the cost model picks)."""
        spec = parse_drafter(drafter).resolve(draft is not None)
        uses_model = spec.needs_model and draft is not None
        context = _check_long_context(long_context, draft.backend if uses_model else None)
        if context.mode == "auto" and spec.kind != "hybrid":
            # auto's window rests on lookup copying from the whole prompt; a model-only draft needs
            # the prompt itself (measured: docs/drafters.md)
            context = replace(context, window=0)
        if uses_model:
            _check_tokenizers(target, draft)
        self.target = target
        self.draft = draft
        self.tokenizer = target.tokenizer
        #: the drafter this Decoder drafts with (auto resolved)
        self.drafter = spec
        if uses_model and draft.backend != target.backend:
            raise SpeckvError(f"draft runs on {draft.backend} and target on {target.backend}; load both on one backend")
        #: selects trained controller artifacts and calibrated costs for this pair
        self.setup = Setup(target.name, draft.name if uses_model else "-", target.compression,
                           draft.compression if uses_model else "-", target.runner.device.type,
                           getattr(draft.model, "requested", None) if uses_model else None, target.backend)
        self._warned = False
        if probe and spec.kind != "none" and _stale(cost_path(self.setup)):
            self._probe_costs()
        if context.mode == "auto" and context.threshold is None:
            cost = cost_for(self.setup)
            context = context.with_threshold(auto_threshold(lambda n: cost.draft_ms(1, n), context.budget))
        #: what of a long prompt the draft model attends to (auto: with its threshold chosen)
        self.long_context = context
        source = spec.source(ChainSource(draft.runner, context=context) if uses_model else None)
        self.engine = Engine(target.runner, source)
        if controller is None:
            controller = "auto" if source else "autoregressive"
        #: the default policy: a template, each run gets a deep copy (runs never share its state)
        self.controller = self._controller(controller)
        self._lock = threading.Lock()  # held for one engine step (or one tokenizer call) at a time
        self.stop_ids = target.eos_ids()

    def _probe_costs(self) -> None:
        """Measure this machine's cost lines for the setup once (seconds) and cache them."""
        import sys

        from speckv.measure.probe import probe

        print(f"speckv: timing this machine's forwards for {self.setup.slug()} (once; cached)", file=sys.stderr)
        draft = self.draft.runner if self.setup.draft != "-" else None
        probe(self.target.runner, draft, asdict(self.setup)).save(cost_path(self.setup))

    def make_controller(self, spec: str | ControllerSpec) -> Controller:
        return self._controller(spec)

    def _controller(self, controller: str | ControllerSpec | Controller) -> Controller:
        """A controller for this Decoder, built from a spec or given; refused if it drafts and
        the Decoder has no drafter."""
        if isinstance(_checked_controller(controller), (str, ControllerSpec)):
            controller = make_controller(controller, self.setup)
        if controller.uses_draft and self.engine.draft is None:
            raise SpeckvError(f"controller {controller.name} needs a draft model (or --drafter lookup)")
        _tree_needs_model(controller, self.setup.draft != "-")
        if controller.trees and not (self.target.runner.trees and self.draft.runner.trees) and not self._warned:
            import sys

            self._warned = True  # once per Decoder: the server builds a controller per request
            print(f"speckv: warning: {self.target.backend} takes no tree attention mask here; "
                  f"{controller.name} drafts chains of its depth instead", file=sys.stderr)
        return controller

    def _run_controller(self, controller: str | Controller | None) -> Controller:
        """This run's controller: None = a fresh copy of the default; a Controller object passed
        in is used as-is (the caller may inspect it afterwards, and must not share it between
        concurrent runs)."""
        if controller is None:
            return copy.deepcopy(self.controller)
        return self._controller(controller)

    def encode(self, prompt: str, raw: bool = False) -> list[int]:
        """Token ids for a prompt; through the chat template unless raw."""
        if not isinstance(prompt, str):
            raise SpeckvError(f"prompt must be a string or a list of token ids (got {type(prompt).__name__})")
        if not prompt.strip():
            raise SpeckvError("empty prompt")
        check_unicode(prompt, "prompt")
        if raw or not self.tokenizer.chat_template:
            with self._lock:  # a fast tokenizer may refuse concurrent calls ("Already borrowed")
                return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        return self.encode_chat([{"role": "user", "content": prompt}])

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation (role/content dicts) through the chat template, ready for
        the assistant's turn."""
        if not self.tokenizer.chat_template:
            raise SpeckvError(f"{self.target.name} has no chat template; give a raw prompt")
        try:
            with self._lock:
                return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                               return_dict=True)["input_ids"])
        except Exception as exc:  # jinja raises on turn orders a template refuses
            raise SpeckvError(f"the chat template rejected these messages: {exc}") from None

    def prepare(self, prompt: str | list[int], raw: bool = False, truncate_for: int | None = None) -> list[int]:
        """A prompt's token ids, checked against the vocabulary and the target's context: lets a
        caller validate a whole batch of prompts before generating any of them. A prompt that does
        not fit is refused, naming both lengths, unless the caller asks for truncation:
        `truncate_for=N` drops the oldest tokens so that N new tokens fit after the rest."""
        if isinstance(prompt, str):
            ids = self.encode(prompt, raw)
        elif isinstance(prompt, (list, tuple)):
            ids = list(prompt)
        else:
            raise SpeckvError(f"prompt must be a string or a list of token ids (got {type(prompt).__name__})")
        if truncate_for is not None:
            if truncate_for < 1 or truncate_for >= self.target.max_context:
                raise SpeckvError(f"cannot keep room for {truncate_for} new tokens in a context of {self.target.max_context}")
            ids = ids[-(self.target.max_context - truncate_for):]
        return self.engine.check_prompt(ids, self.target.max_context)

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
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise SpeckvError(f"max_new_tokens must be an integer (got {max_new_tokens!r})")
        stops = _stop_list(stop)
        ctrl = self._run_controller(controller)
        ids = self.prepare(prompt, raw)
        run.prompt_ids = ids
        run.detok = Detokenizer(self.tokenizer)
        events = self.engine.run(ids, ctrl, config, max_new_tokens, self.stop_ids, self.target.max_context)
        while True:
            with self._lock:  # one engine step, and the decoding it needs; never held across a yield
                piece, done = self._step(events, run, stops)
            if piece:
                yield piece
            if done:
                return

    def _step(self, events: Iterator, run: _Run, stops: list[str]) -> tuple[str, bool]:
        """Advance one engine step: (the text that became final, whether the run is over)."""
        event = next(events, None)
        if event is None:
            return "", True
        run.prefill_ms += event.prefill_ms
        run.draft_prefill_ms += event.draft_prefill_ms
        run.steps.append(event.record)
        run.token_ids += event.tokens
        if event.finished:
            run.finish_reason = event.finished
        detok = run.detok
        stable = detok.stable
        detok.add(event.tokens)  # run.text is the full decode, done over a few tokens (detok.py)
        run.text = detok.text
        # text[:stable] was searched last step: a stop string starting before `start` lies inside it
        start = max(0, min(stable, detok.stable) - max(map(len, stops), default=0) + 1)
        cut = min((i for s in stops if (i := run.text.find(s, start)) >= 0), default=-1)
        if cut >= 0:
            run.text, run.finish_reason = run.text[:cut], "stop"
            # drop the tokens whose text reaches into the stop string (text_len = len(decode(ids[:n])))
            while run.token_ids and detok.text_len(len(run.token_ids) - 1) >= cut:
                run.token_ids.pop()
            events.close()
            return run.text[run.emitted:], True
        safe = len(run.text) - _held_back(run.text, stops)
        if run.text[:safe].endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
            safe -= 1
        if event.finished:
            safe = len(run.text)
        piece = ""
        if safe > run.emitted:
            piece = run.text[run.emitted:safe]
            run.emitted = safe
        return piece, bool(event.finished)

    def generate(self, prompt: str | list[int], **kwargs) -> Result:
        """Generate for one prompt (text, or token ids used as-is). kwargs: max_new_tokens, stop,
        raw, controller, and transformers' sampling names do_sample/temperature/top_k/top_p/seed."""
        stream = self.stream(prompt, **kwargs)
        for _ in stream:
            pass
        return stream.result()

    def stream(self, prompt: str | list[int], **kwargs) -> Stream:
        """A generation to iterate: text pieces as soon as they are final (same kwargs as generate);
        `.result()` afterwards gives ids, steps and stats, `.close()` stops it between steps."""
        return Stream(self._run(prompt, run := _Run([]), **kwargs), run)


class Stream(Iterator[str]):
    """One generation in progress. Nothing runs until the first `next()` (bad arguments raise
    there too); the wall clock counts from then to the last piece or `close()`."""

    def __init__(self, pieces: Iterator[str], run: _Run):
        self._pieces, self._run = pieces, run
        self._t0: float | None = None
        self._wall: float | None = None

    def __next__(self) -> str:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        try:
            return next(self._pieces)
        except StopIteration:
            self._stop_clock()
            raise

    def close(self) -> None:
        """Stop between engine steps; result() then holds what was generated so far."""
        self._pieces.close()
        self._stop_clock()

    def _stop_clock(self) -> None:
        if self._wall is None:
            self._wall = time.perf_counter() - self._t0 if self._t0 is not None else 0.0

    def result(self) -> Result:
        run = self._run
        wall = self._wall if self._wall is not None else time.perf_counter() - (self._t0 or time.perf_counter())
        stats = Stats.from_steps(run.steps, len(run.token_ids), wall, run.prefill_ms, run.draft_prefill_ms)
        return Result(run.text, run.prompt_ids, run.token_ids, run.steps, stats, run.finish_reason)


def load(
    target: str = DEFAULT_TARGET,
    draft: str | None = DEFAULT_DRAFT,
    dtype: str | None = None,
    controller: str | ControllerSpec | Controller | None = None,
    device: str = "auto",
    compression: str | None = None,
    draft_compression: str | None = None,
    drafter: str = "auto",
    draft_vocab: int | None = None,
    backend: str = "auto",
    long_context: str = "auto",
) -> Decoder:
    """Load (provisioning if needed) a target and draft; draft=None gives the target alone (or
    prompt lookup). drafter: `auto` (hybrid: prompt lookup or the draft model, chosen per step),
    `model`, `hybrid[:N_MAX[:N_MIN]]`, or `lookup[:N_MAX[:N_MIN]]` (loads no draft model).
    draft_vocab: draft over the N most frequent tokens only (a reduced LM head, FR-Spec).

    backend: `auto` (llama.cpp on CPU when installed, else transformers), `torch` or `llamacpp`.
    controller None: `auto` with a draft, `autoregressive` without. dtype sets both models;
    compression overrides it for the target and draft_compression for the draft. Levels:
    fp32|bf16|fp16|int8|nf4 on transformers (default bf16; the draft NF4 on CPU:
    default_draft_level), q4_k_m|q8_0|bf16|f16|f32|native on llama.cpp (default native: the
    GGUF as it is). Losslessness is relative to the compressed target.
    long_context: full, window, retrieval or auto[:options] (drafting/context.py)."""
    LongContext.parse(long_context)  # a bad spec fails before anything else is looked at
    if controller is not None:
        _checked_controller(controller)  # fail on a bad controller before loading gigabytes
        _tree_needs_model(controller, bool(draft) and parse_drafter(drafter).resolve(bool(draft)).needs_model)
    backend = pick_backend(backend, device, (target, draft),  # an unknown device or backend fails before loading too
                           "draft_vocab (a reduced draft head)" if draft_vocab is not None else None)
    if not parse_drafter(drafter).resolve(draft is not None).needs_model:
        draft = None  # prompt lookup needs no draft model
    _check_long_context(long_context, backend if draft else None)  # before loading, too
    target_level = parse_level(compression or dtype, backend)
    draft_level = parse_level(draft_compression or default_draft_level(dtype, device, backend), backend)
    if draft_vocab is not None and not draft:
        raise SpeckvError("draft_vocab reduces a draft model's head; this run loads no draft model")
    if draft and draft_vocab is not None:
        from speckv.models.provision import model_path
        from speckv.models.reduced_head import check_draft_vocab

        check_draft_vocab(draft_vocab, model_path(draft))  # provisions the draft if needed, loads nothing
    target_model = load_model(target, target_level, device, backend)
    draft_model = load_draft(draft, draft_level, device, backend, draft_vocab) if draft else None
    return Decoder(target_model, draft_model, controller, drafter, probe=True, long_context=long_context)


def default_draft_level(dtype: str | None, device: str, backend: str = "torch") -> str | None:
    """The draft's compression when none is given: on transformers, NF4 on CPU at the default bf16
    (a draft token costs about half as much as in bf16 and the draft ranks tokens nearly as well:
    the cheaper draft is worth more than any stop rule, benchmarks/results/drafters.json); else
    `dtype` (None: the backend's default). Only where bitsandbytes runs NF4 fast on this CPU: its
    native kernel needs AVX-512 BF16, and elsewhere an NF4 draft token cost 1.6 s against 105 ms
    in bf16 (models/cpu_kernels.py)."""
    if backend != "torch" or Compression.parse(dtype or "bf16").level != "bf16" or pick_device(device).type != "cpu":
        return dtype
    try:
        Compression("nf4").require()
    except SpeckvError:
        return dtype
    from speckv.models import cpu_kernels

    return "nf4" if cpu_kernels.nf4_pays() else dtype
