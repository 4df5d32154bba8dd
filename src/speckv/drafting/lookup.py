"""Prompt lookup: propose what followed the current n-gram where it appeared before in the text.

Zero model cost: proposals come from the prompt and the output so far, so lookup pays where the
output copies its input (code edits, summaries, retrieval answers) and costs next to nothing where
it finds no match. Its signals describe the empirical next-token distribution over every earlier
occurrence of the matched n-gram (top1 = share of occurrences followed by the proposed token,
margin = top1 minus the runner-up's share, entropy in nats), the same three numbers a model
drafter reports, so the same controllers can price it; `TokenSignals.match_len` says how long the
match was (0 for model drafts).

Invariants: longest n-gram first (n_max down to n_min); ties go to the most recent occurrence;
the drafter keeps no state beyond `ids`, so prefill and rollback do nothing. Proposals are
deterministic: speculative sampling treats them as one-hot draft distributions, which keeps
sampling exact.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from speckv.control.base import Controller
from speckv.drafting import base
from speckv.drafting.base import Draft, Proposal
from speckv.errors import SpeckvError
from speckv.records import TokenSignals

MAX_N = 16


def lookup(ids: np.ndarray, n_min: int, n_max: int) -> tuple[int, TokenSignals] | None:
    """The token that followed the longest earlier occurrence of the text's last n-gram, with
    signals from all such occurrences; None when no n-gram of length n_min..n_max recurs."""
    for n in range(min(n_max, len(ids) - 1), n_min - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)  # every n-gram that has a successor
        starts = np.flatnonzero((windows == ids[-n:]).all(axis=1))
        if not len(starts):
            continue
        followers = ids[starts + n].tolist()
        counts = Counter(followers)
        best = max(counts.values())
        token = next(t for t in reversed(followers) if counts[t] == best)  # most recent among the most frequent
        shares = sorted((c / len(followers) for c in counts.values()), reverse=True)
        entropy = -sum(s * math.log(s) for s in shares)
        return token, TokenSignals(entropy, shares[0], shares[0] - (shares[1] if len(shares) > 1 else 0.0), n)
    return None


@dataclass(frozen=True)
class LookupSource:
    """Prompt lookup as a DraftSource: `lookup[:N_MAX[:N_MIN]]` (defaults 3 and 1, as
    transformers' prompt lookup uses n-grams of up to 3 tokens)."""

    n_max: int = 3
    n_min: int = 1
    name: str = "lookup"
    vocab: int | None = None  # proposes ids that occur in the text: any id the target accepts

    def __post_init__(self) -> None:
        if not 1 <= self.n_min <= self.n_max <= MAX_N:
            raise SpeckvError(f"drafter lookup: n-gram lengths must satisfy 1 <= n_min <= n_max <= {MAX_N} "
                              f"(got n_max={self.n_max}, n_min={self.n_min})")

    def new(self, vocab: int, sync) -> LookupDrafter:
        return LookupDrafter(self.n_min, self.n_max)


@dataclass
class LookupDrafter:
    n_min: int
    n_max: int

    def prefill(self, ids: list[int]) -> None:
        """Nothing to read ahead: each proposal searches the text as it stands."""

    def propose(self, ids: list[int], budget: int, controller: Controller, config, generator,
                stop_ids: frozenset[int]) -> Draft:
        text = np.empty(len(ids) + budget, dtype=np.int64)
        text[: len(ids)] = ids
        end = len(ids)

        def next_proposal() -> Proposal | None:
            nonlocal end
            found = lookup(text[:end], self.n_min, self.n_max)
            if found is None:
                return None
            text[end] = found[0]
            end += 1
            return Proposal(*found)

        return base.draft_loop(next_proposal, budget, controller, stop_ids)

    def rollback(self, length: int) -> None:
        """Nothing cached."""
