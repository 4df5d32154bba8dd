"""Hybrid drafting: per step, prompt lookup's free offer or the draft model's chain, as the
controller chooses.

Each step the drafter first computes what prompt lookup would copy (no model cost), shows its
signals to the controller (`Controller.choose`), and then drafts from the chosen proposer through
its own draft loop: "lookup" streams the offer, "model" runs the chain, "none" drafts nothing (a
plain target step). A cost-aware controller prices each choice with the cost model's line for that
proposer, so the choice follows what each costs on this machine.

Invariants: the model's KV cache holds a prefix of the accepted ids however many steps lookup
drafted (its chain catches up on the tokens it has not seen when next chosen), and the draft model
never reads the prompt unless it is chosen. A step drafts from one proposer only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from speckv.control.base import Controller
from speckv.drafting import base
from speckv.drafting.base import Draft, Drafter, DraftSource
from speckv.drafting.lookup import LookupDrafter, LookupSource
from speckv.errors import SpeckvError

CHOICES = ("lookup", "model", "none")


@dataclass(frozen=True)
class HybridSource:
    """A draft model's source (ChainSource, or replay's trace-backed one) plus prompt lookup."""

    model: DraftSource
    lookup: LookupSource = LookupSource()
    name: str = "hybrid"
    kinds: tuple[str, ...] = ("model", "lookup")
    lazy_prompt: bool = True  # the model reads the prompt in its first chain, not at prefill

    @property
    def vocab(self) -> int | None:
        return self.model.vocab

    def attended(self, prompt_len: int) -> int:
        attended = getattr(self.model, "attended", None)
        return attended(prompt_len) if attended is not None else prompt_len

    def new(self, vocab: int, sync) -> HybridDrafter:
        return HybridDrafter(self.model.new(vocab, sync), self.lookup.new(vocab, sync))


class HybridDrafter:
    def __init__(self, model: Drafter, lookup: LookupDrafter):
        self.model, self.lookup = model, lookup

    def prefill(self, ids: list[int]) -> None:
        """Nothing yet: the model reads the prompt the first time it is chosen."""

    def propose(self, ids: list[int], budget: int, controller: Controller, config, generator,
                stop_ids: frozenset[int]) -> Draft:
        t0 = time.perf_counter()
        offer = self.lookup.offer(ids, budget)
        t1 = time.perf_counter()
        choice = controller.choose(tuple(p.signals for p in offer))
        t2 = time.perf_counter()
        if choice == "lookup" and offer:
            draft = base.offered(offer, budget, controller, stop_ids, "lookup")
        elif choice == "model":
            draft = self.model.propose(ids, budget, controller, config, generator, stop_ids)
        elif choice in CHOICES:
            draft = Draft()
        else:
            raise SpeckvError(f"controller {controller.name} chose {choice!r}; expected one of {CHOICES}")
        draft.draft_ms += (t1 - t0) * 1000
        draft.control_ms += (t2 - t1) * 1000
        return draft

    def rollback(self, length: int, tree_path: list[int] | None = None) -> None:
        self.model.rollback(length, tree_path)

    def follow(self, target) -> None:
        follow = getattr(self.model, "follow", None)
        if follow is not None:
            follow(target)

    def close(self) -> None:
        self.model.close()
