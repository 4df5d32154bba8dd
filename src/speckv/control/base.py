"""The controller interface: the one seam between the decode loop and every policy.

Five calls, no tensors: start, budget, keep_drafting, observe, and choose (which proposer, when
the run has more than one); tree policies (`trees = True`) answer a sixth, tree_width, per level
of a draft tree, and then `budget()` is the tree's maximum depth. The same object runs live in the engine and (later) offline in trace replay, so a policy's
replayed behaviour is its live behaviour. The engine imports only this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from speckv.records import TokenSignals


@dataclass(frozen=True, slots=True)
class RequestInfo:
    prompt_len: int
    max_new_tokens: int
    #: the proposers this run can draft from: "model" (a draft model's chain), "lookup" (prompt lookup)
    drafters: tuple[str, ...] = ("model",)
    #: prompt tokens the draft model attends to (a long-context working cache); None: all of them
    draft_prompt_len: int | None = None

    @property
    def draft_context(self) -> int:
        return self.prompt_len if self.draft_prompt_len is None else self.draft_prompt_len


@dataclass(frozen=True, slots=True)
class StepOutcome:
    budget: int
    drafted: int
    accepted: int
    signals: tuple[TokenSignals, ...]
    drafter: str = ""  # who drafted: "model", "lookup" ("": nothing was drafted)
    tree_depth: int = 0  # a tree step's levels (`drafted` counts its nodes, `accepted` its path); 0: a chain


class Controller:
    """Decides how far to speculate. Subclasses override `budget`, optionally the rest."""

    name = "controller"
    #: False for policies that never draft: the engine then skips the draft model entirely.
    uses_draft = True
    #: True: drafts token trees (tree_width) where the backend verifies them; False: chains
    trees = False
    #: trees only: N > 0 re-ranks every child seen by path probability and keeps the best N (EAGLE-2)
    rerank = 0
    #: trees only: expand the most probable child alone, runners-up are leaves (replayable from traces)
    spine = False

    def start(self, request: RequestInfo) -> None:
        """A new request begins: reset per-request state."""

    def budget(self) -> int:
        """Maximum number of tokens to draft this step (0 = a plain target step)."""
        raise NotImplementedError

    def keep_drafting(self, signals: TokenSignals, drafted: int) -> bool:
        """Called after each drafted token (while below budget): False stops drafting now."""
        return True

    def tree_width(self, level: int, spine: tuple[TokenSignals, ...]) -> int:
        """Tree policies only: how many nodes level `level` of this step's draft tree keeps (1: the
        root's children). `spine` holds one entry per level so far plus this one: the signals of the
        draft distribution each level of the most probable path was drawn from. 0 ends the tree.
        The policy keeps its own node budget."""
        return 0

    def choose(self, lookup: tuple[TokenSignals, ...]) -> str:
        """Hybrid drafting only, once per step with a budget: given prompt lookup's offer (the
        signals of the tokens it would copy, free to compute; empty when the text has no match),
        draft from "lookup", the "model", or "none". Default: lookup when it offers anything."""
        return "lookup" if lookup else "model"

    def observe(self, outcome: StepOutcome) -> None:
        """Called after verification with what happened."""
