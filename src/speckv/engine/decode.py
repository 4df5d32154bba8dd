"""The decode loop: draft, verify in one target forward, accept, roll caches back, repeat.

Invariant: each model's KV cache holds a prefix of `ids` that excludes the last token, so the
next target forward is [ids[-1], *drafted] and yields k+1 rows of logits in one pass.
Batch size 1: one request at a time (what speculative decoding helps most on CPU).
Every run owns its state (both KV caches, its Drafter, the sampling generator): an Engine holds
only the target and a DraftSource that makes one Drafter per run, so suspended runs on one Engine
can be resumed in any order. The engine knows proposers only through drafting.base's protocol.
The engine does not lock; callers that share one across threads serialize steps (api.Decoder does).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from speckv.backends import Runner, Sequence, as_runner, sync_for
from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.drafting.base import Drafter, DraftSource
from speckv.drafting.tree import Tree
from speckv.engine.sampling import (
    SamplingConfig,
    accept_greedy,
    accept_speculative,
    accept_tree_greedy,
    accept_tree_speculative,
)
from speckv.errors import SpeckvError
from speckv.records import StepRecord


@dataclass(slots=True)
class StepEvent:
    tokens: list[int]  # tokens appended this step
    record: StepRecord
    finished: str | None  # "eos", "length" or None
    prefill_ms: float = 0.0  # prompt processing before the first step (first event only)
    draft_prefill_ms: float = 0.0  # the draft's share of prefill_ms (its reading of the prompt)


class Engine:
    """Speculative decoding for one target and an optional proposer that share a vocabulary."""

    def __init__(self, target: Runner, draft: DraftSource | None = None, acceptance=None, tree_acceptance=None):
        self.target = target = as_runner(target)  # a transformers model is welcome too
        self.device = target.device
        self.sync = sync_for(self.device)
        # Embedding tables are often padded past the tokenizer; compare over the shared rows.
        self.vocab = min(target.vocab, (draft.vocab if draft is not None else None) or target.vocab)
        self.draft = draft
        self.acceptance = acceptance  # None: greedy or speculative sampling, by the config
        self.tree_acceptance = tree_acceptance  # the same for trees

    def new_drafter(self) -> Drafter:
        """A drafter with empty state for one run (never shared between runs)."""
        return self.draft.new(self.vocab, self.sync)

    def check_prompt(self, prompt_ids: list[int], max_context: int | None = None) -> list[int]:
        """The prompt as a list of ints, or a SpeckvError naming the bad id: an id outside the
        embedding table otherwise fails deep inside torch with an IndexError."""
        if not prompt_ids:
            raise SpeckvError("empty prompt: nothing to condition on")
        ids = []
        for tok in prompt_ids:
            if isinstance(tok, bool) or not hasattr(tok, "__index__"):
                raise SpeckvError(f"token ids must be integers (got {tok!r} of type {type(tok).__name__})")
            try:
                tok = tok.__index__()
            except TypeError:  # e.g. a float tensor
                raise SpeckvError(f"token ids must be integers (got {tok!r})") from None
            if not 0 <= tok < self.vocab:
                raise SpeckvError(f"token id {tok} is outside the vocabulary (size {self.vocab}: ids 0..{self.vocab - 1})")
            ids.append(tok)
        if max_context is not None and len(ids) >= max_context:
            raise SpeckvError(f"prompt has {len(ids)} tokens; the model's context is {max_context}")
        return ids

    @torch.inference_mode()
    def run(
        self,
        prompt_ids: list[int],
        controller: Controller,
        config: SamplingConfig = SamplingConfig(),
        max_new_tokens: int = 128,
        stop_ids: frozenset[int] = frozenset(),
        max_context: int | None = None,
    ) -> Iterator[StepEvent]:
        """Yield one StepEvent per speculation step until EOS or max_new_tokens."""
        if max_new_tokens < 1:
            raise SpeckvError(f"max_new_tokens must be positive (got {max_new_tokens})")
        ids = self.check_prompt(prompt_ids, max_context)
        if controller.uses_draft and self.draft is None:
            raise SpeckvError(f"controller {controller.name} needs a drafter (a draft model or --drafter lookup)")
        limit = max_new_tokens if max_context is None else min(max_new_tokens, max_context - len(prompt_ids))
        generator = None
        if config.do_sample:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(config.seed if config.seed is not None else torch.seed())
        accept = self.acceptance or (accept_speculative if config.do_sample else accept_greedy)
        cache = self.target.sequence()
        drafter = self.new_drafter() if self.draft is not None else None  # cheap: its cache fills lazily
        if drafter is not None and hasattr(drafter, "follow"):
            drafter.follow(cache)
        try:
            yield from self._loop(ids, cache, drafter, controller, config, generator, accept, limit, stop_ids)
        finally:  # a finished, failed or abandoned (closed) run hands its caches back
            cache.close()
            if drafter is not None:
                drafter.close()

    def _loop(self, ids: list[int], cache: Sequence, drafter: Drafter | None, controller: Controller,
              config: SamplingConfig, generator, accept, limit: int, stop_ids: frozenset[int]) -> Iterator[StepEvent]:
        attended = getattr(self.draft, "attended", None)  # a long-context draft reads part of the prompt
        controller.start(RequestInfo(len(ids), limit, self.draft.kinds if self.draft is not None else (),
                                     attended(len(ids)) if attended is not None else None))
        t0 = time.perf_counter()
        if len(ids) > 1:
            cache.forward(ids[:-1], 1, self.vocab)
        self.sync()
        prefill_ms = (time.perf_counter() - t0) * 1000

        draft_prefill_ms = 0.0
        produced = 0
        step = 0
        while True:
            t0 = time.perf_counter()
            # Never draft past the token limit: the last token always comes from the target.
            budget = max(0, min(controller.budget(), limit - produced - 1))
            control_ms = (time.perf_counter() - t0) * 1000
            drafted, draft_probs, signals, draft_ms, source, d = [], None, [], 0.0, "", None
            if budget:
                if step == 0:  # the draft reads the prompt only for a controller that drafts at once:
                    t1 = time.perf_counter()  # one that starts with plain steps may never pay for it
                    drafter.prefill(ids)
                    self.sync()
                    draft_prefill_ms = (time.perf_counter() - t1) * 1000
                    prefill_ms += draft_prefill_ms
                d = drafter.propose(ids, budget, controller, config, generator, stop_ids)
                drafted, signals, draft_ms = d.tokens, d.signals, d.draft_ms
                source = d.source if d.size else ""
                control_ms += d.control_ms
                if drafted and config.do_sample:  # (a tree's candidates are deterministic)
                    draft_probs = d.probs(self.vocab, self.device)

            t1 = time.perf_counter()
            if d is not None and d.tree is not None:
                new, accepted, tree_path = self._verify_tree(ids, cache, d.tree, config, generator)
            else:
                logits = cache.forward(ids[len(cache):] + drafted, len(drafted) + 1, self.vocab)
                verdict = accept(logits, drafted, draft_probs=draft_probs, config=config, generator=generator)
                new, accepted, tree_path = drafted[: verdict.accepted] + [verdict.next_token], verdict.accepted, None
            self.sync()
            t2 = time.perf_counter()

            finished = None
            for i, tok in enumerate(new):
                if tok in stop_ids:
                    new, finished = new[: i + 1], "eos"
                    break
            if produced + len(new) >= limit:
                new, finished = new[: limit - produced], finished or "length"
            ids += new
            produced += len(new)
            # Roll both caches back to the accepted prefix (all of ids but its last token).
            cache.truncate(len(ids) - 1)
            if budget:
                drafter.rollback(len(ids) - 1, tree_path)

            t3 = time.perf_counter()
            size, depth = (d.size, d.depth) if d is not None else (0, 0)
            controller.observe(StepOutcome(budget, size, accepted, tuple(signals), source, depth))
            control_ms += (time.perf_counter() - t3) * 1000
            record = StepRecord(
                step=step, context_len=len(ids) - len(new), budget=budget, drafted=size,
                accepted=accepted, emitted=len(new), signals=signals,
                draft_ms=draft_ms, verify_ms=(t2 - t1) * 1000, control_ms=control_ms, drafter=source, tree_depth=depth,
                draft_read=d.read if d is not None else 0,
            )
            first = step == 0
            yield StepEvent(new, record, finished, prefill_ms if first else 0.0, draft_prefill_ms if first else 0.0)
            if finished:
                return
            step += 1

    def _verify_tree(self, ids: list[int], cache: Sequence, tree: Tree, config: SamplingConfig, generator):
        """One target forward over the root and every node under a tree mask; keep the accepted
        path in the cache (compacted, not recomputed). Returns (new tokens, accepted, path)."""
        base = len(ids)  # the root, ids[-1], becomes entry base - 1
        feed = ids[len(cache):]
        parents = [None] * len(feed) + [base - 1 if p < 0 else base + p for p in tree.parents]
        logits = cache.forward(feed + tree.tokens, len(tree) + 1, self.vocab, parents)
        accept = self.tree_acceptance or (accept_tree_speculative if config.do_sample else accept_tree_greedy)
        verdict = accept(logits, tree.tokens, tree.parents, config=config, generator=generator)
        cache.compact(base, [base + n for n in verdict.path])
        return [tree.tokens[n] for n in verdict.path] + [verdict.next_token], len(verdict.path), verdict.path
