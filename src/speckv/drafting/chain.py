"""Model drafting: the draft model proposes a chain, one token per forward, or (for a tree
controller, on a backend that takes tree masks) a token tree, one forward per level
(drafting/tree.py), with its own KV cache.

A ChainDrafter is one run's draft state (ChainSource.new makes one per run), so runs that share
a draft model never share, reset or crop each other's cache. Its draft loop is drafting.base's.
With a long-context spec (drafting/context.py) its cache is a WorkingCache: the same calls over
the accepted ids, while the draft attends to a bounded part of a long prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from speckv.backends import Runner, as_runner
from speckv.control.base import Controller
from speckv.drafting import base, tree
from speckv.drafting.base import Draft, Proposal
from speckv.drafting.context import LongContext, WorkingCache
from speckv.engine.sampling import SamplingConfig
from speckv.records import TokenSignals


TOPK_ENTROPY_K = 10  # HeteroSpec's K: EAGLE's expansion top-k


def batch_signals(logits: torch.Tensor) -> list[TokenSignals]:
    """Entropy, top-1 probability, top-1 - top-2 margin and the entropy of the renormalized top-10
    probabilities of each row of logits."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    top = p.topk(min(TOPK_ENTROPY_K, p.shape[-1]), dim=-1).values
    q = top / top.sum(-1, keepdim=True)
    topk_entropy = -(q * q.clamp_min(1e-30).log()).sum(-1)
    margin = top[:, 0] - top[:, 1] if top.shape[-1] > 1 else top[:, 0]
    rows = torch.stack([entropy, top[:, 0], margin, topk_entropy], dim=-1).tolist()
    return [TokenSignals(e, t, m, 0, k) for e, t, m, k in rows]


def token_signals(logits: torch.Tensor) -> TokenSignals:
    """batch_signals() of one row."""
    return batch_signals(logits[None])[0]


@dataclass(frozen=True)
class ChainSource:
    """A draft model proposing a chain, one token per forward on its own KV cache."""

    model: Runner
    name: str = "model"
    kinds: tuple[str, ...] = ("model",)
    context: LongContext | None = None  # what of a long prompt the draft attends to (None: all of it)

    def __post_init__(self):
        object.__setattr__(self, "model", as_runner(self.model))  # a transformers model is welcome too

    @property
    def vocab(self) -> int:
        return self.model.vocab

    def attended(self, prompt_len: int) -> int:
        """Prompt tokens the draft attends to (what its cost grows with)."""
        return self.context.attended(prompt_len) if self.context is not None else prompt_len

    def new(self, vocab: int, sync) -> ChainDrafter:
        return ChainDrafter(self.model, vocab, sync, self.context)


class ChainDrafter:
    """Owns one run's draft cache; the cache always holds a prefix of the accepted ids."""

    def __init__(self, model: Runner, vocab: int, sync, context: LongContext | None = None):
        self.vocab = vocab
        self.sync = sync
        self.trees = bool(getattr(model, "trees", False))
        long = context is not None and context.mode != "full"
        self.cache = WorkingCache(model, context) if long else model.sequence()
        self._grown: tuple[int, dict[int, int]] | None = None  # the last tree: cache length before it, node -> entry

    def follow(self, target) -> None:
        """The target's sequence for this run: retrieval ranks prompt chunks by its attention."""
        if isinstance(self.cache, WorkingCache):
            self.cache.follow(target)

    def _forward(self, tokens: list[int]) -> torch.Tensor:
        return self.cache.forward(tokens, 1, self.vocab)[0]

    def prefill(self, ids: list[int]) -> None:
        if len(ids) > 1:
            self._forward(ids[:-1])

    def propose(
        self,
        ids: list[int],
        budget: int,
        controller: Controller,
        config: SamplingConfig,
        generator: torch.Generator | None,
        stop_ids: frozenset[int],
    ) -> Draft:
        """Draft up to `budget` tokens after `ids`, asking the controller after each one."""
        feed = ids[len(self.cache):]  # catch up on tokens the draft has not seen
        if controller.trees and self.trees:
            return self._tree(feed, budget, controller, stop_ids)
        work = getattr(self.cache, "work", self.cache)  # what is forwarded (a window reads part of a prompt)
        before = len(work)

        def next_proposal() -> Proposal:
            nonlocal feed
            logits = self._forward(feed)
            q = None
            if config.do_sample:
                q = config.probs(logits[None])[0]
                token = int(torch.multinomial(q, 1, generator=generator))
            else:
                token = int(logits.argmax())
            feed = [token]
            return Proposal(token, token_signals(logits), q)

        draft = base.draft_loop(next_proposal, budget, controller, stop_ids, self.sync)
        # forwarded: what it read, then every proposal but the last (never forwarded)
        draft.read = max(0, len(work) - before - len(draft.proposals))
        return draft

    def _tree(self, feed: list[int], budget: int, controller: Controller, stop_ids: frozenset[int]) -> Draft:
        """One tree step: catch up and read the root's row, then one forward per level over the
        frontier (each node attends to its own ancestors), through drafting.tree.grow."""
        t0 = time.perf_counter()
        base = len(self.cache) + len(feed)  # the root, ids[-1], is entry base - 1
        index: dict[int, int] = {}  # node -> its entry in this cache

        def expand(frontier: list[int], seen: tree.Tree) -> list[tree.Row]:
            if frontier == [-1]:
                logits = self._forward(feed)[None]
            else:
                start = len(self.cache)
                parents = [index[seen.parents[n]] if seen.parents[n] >= 0 else base - 1 for n in frontier]
                logits = self.cache.forward([seen.tokens[n] for n in frontier], len(frontier), self.vocab, parents)
                index.update((n, start + i) for i, n in enumerate(frontier))
            return tree.rows_from_logits(logits, batch_signals)

        grown, renumber = tree.grow(expand, controller, budget, stop_ids)
        self.sync()
        self._grown = (base, {renumber[n]: c for n, c in index.items() if n in renumber})
        draft = Draft(source="model", tree=grown, read=len(feed) - 1)
        draft.draft_ms = (time.perf_counter() - t0) * 1000
        return draft

    def rollback(self, length: int, tree_path: list[int] | None = None) -> None:
        """Drop cached positions beyond `length` (the accepted prefix minus its last token); after
        a tree, first keep the accepted nodes the draft had forwarded."""
        if self._grown is not None:
            base, index = self._grown
            self._grown = None
            kept = [index[n] for n in (tree_path or []) if n in index]
            self.cache.compact(base, kept)
        self.cache.truncate(length)
        if isinstance(self.cache, WorkingCache):
            self.cache.commit()

    def close(self) -> None:
        self.cache.close()
