"""What the engine needs from a proposer, and the one draft loop every proposer runs through.

Invariants:
- A `DraftSource` is what an Engine is given; it makes a fresh `Drafter` per run, so runs never
  share proposer state (a draft model's KV cache, a lookup index).
- `draft_loop` is the only code that decides when a step's drafting stops (the budget, a stop id,
  the proposer running dry, the controller's `keep_drafting`) and how drafting and control are
  timed. Live drafters and replay's trace-backed drafter both run through it, so they cannot drift.
- A proposal without a probability row is deterministic: for speculative sampling its draft
  distribution is one-hot on the token, which keeps sampling exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from speckv.control.base import Controller
from speckv.drafting.tree import Tree
from speckv.records import TokenSignals


@dataclass(slots=True)
class Proposal:
    """One drafted token, what the proposer knew about it, and (sampled drafts) its distribution."""

    token: int
    signals: TokenSignals
    probs: torch.Tensor | None = None  # q over the shared vocabulary; None: deterministic (one-hot)


@dataclass
class Draft:
    proposals: list[Proposal] = field(default_factory=list)
    draft_ms: float = 0.0  # inside the proposer (model forwards, sampling, lookups)
    control_ms: float = 0.0  # inside controller.keep_drafting (and choose)
    source: str = ""  # the proposer that drafted: "model", "lookup" ("": none)
    tree: Tree | None = None  # a tree step's nodes (then `proposals` is empty); None: a chain
    read: int = 0  # tokens the draft model read first: the prompt, or what it had not seen (its part of draft_ms)

    @property
    def size(self) -> int:
        """Tokens the target verifies beyond the root."""
        return len(self.tree) if self.tree is not None else len(self.proposals)

    @property
    def depth(self) -> int:
        """A tree's levels; 0 for a chain."""
        return self.tree.depth() if self.tree is not None else 0

    @property
    def tokens(self) -> list[int]:
        return [p.token for p in self.proposals]

    @property
    def signals(self) -> list[TokenSignals]:
        """Per drafted token; for a tree, along its spine (what controllers observe)."""
        if self.tree is not None:
            return [self.tree.signals[n] for n in self.tree.spine]
        return [p.signals for p in self.proposals]

    def probs(self, vocab: int, device: torch.device) -> torch.Tensor:
        """The k x vocab draft distributions for speculative sampling (one-hot rows where the
        proposal was deterministic)."""
        rows = []
        for p in self.proposals:
            if p.probs is None:
                row = torch.zeros(vocab, device=device)
                row[p.token] = 1.0
                rows.append(row)
            else:
                rows.append(p.probs)
        return torch.stack(rows)


class Drafter(Protocol):
    """One run's proposer. `ids` is everything accepted so far (prompt + output)."""

    def prefill(self, ids: list[int]) -> None:
        """Read the prompt (called once, before the first drafting step)."""

    def propose(self, ids: list[int], budget: int, controller: Controller, config, generator,
                stop_ids: frozenset[int]) -> Draft:
        """Draft up to `budget` tokens after `ids` through `draft_loop`."""

    def rollback(self, length: int, tree_path: list[int] | None = None) -> None:
        """Forget everything after the first `length` ids (the accepted prefix minus its last token).
        After a tree step, `tree_path` holds the accepted nodes (the cache keeps them without
        recomputing)."""

    def close(self) -> None:
        """The run is over: hand back what the drafter holds (a draft model's cache)."""

    # Optional: `follow(target_sequence)`, called once before the prompt is read, for drafters that
    # read the target's state (long-context retrieval ranks prompt chunks by the target's attention).


class DraftSource(Protocol):
    """What an Engine is given instead of building a drafter itself."""

    name: str
    #: the proposers its drafters draft from ("model", "lookup"): what controllers are told at start
    kinds: tuple[str, ...]
    #: rows of the vocabulary this source can propose (a draft model's LM head); None: any id
    vocab: int | None

    def new(self, vocab: int, sync: Callable[[], None]) -> Drafter:
        """A drafter with empty state for one run, proposing over the first `vocab` ids."""


def draft_loop(next_proposal: Callable[[], Proposal | None], budget: int, controller: Controller,
               stop_ids: frozenset[int], sync: Callable[[], None] = lambda: None, source: str = "model") -> Draft:
    """Ask `next_proposal` for tokens until the budget is spent, a stop id is drafted, the
    proposer has nothing more (None), or the controller says stop (asked after each token below
    the budget)."""
    draft = Draft(source=source)
    while True:
        t0 = time.perf_counter()
        proposal = next_proposal()
        sync()
        t1 = time.perf_counter()
        draft.draft_ms += (t1 - t0) * 1000
        if proposal is None:
            return draft
        draft.proposals.append(proposal)
        if len(draft.proposals) >= budget or proposal.token in stop_ids:
            return draft
        go_on = controller.keep_drafting(proposal.signals, len(draft.proposals))
        draft.control_ms += (time.perf_counter() - t1) * 1000
        if not go_on:
            return draft


def offered(proposals: list[Proposal], budget: int, controller: Controller, stop_ids: frozenset[int],
            source: str, made_ms: float = 0.0) -> Draft:
    """draft_loop over proposals made in advance (prompt lookup's offer); `made_ms`, the time it
    took to make them, counts as drafting time."""
    pending = iter(proposals)
    draft = draft_loop(lambda: next(pending, None), budget, controller, stop_ids, source=source)
    draft.draft_ms += made_ms
    return draft
