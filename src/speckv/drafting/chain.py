"""Chain drafting: the draft model proposes tokens one at a time with its own KV cache.

A ChainDrafter is one run's draft state (ChainSource.new makes one per run), so runs that share
a draft model never share, reset or crop each other's cache. Its draft loop is drafting.base's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speckv.backends import Runner, as_runner
from speckv.control.base import Controller
from speckv.drafting import base
from speckv.drafting.base import Draft, Proposal
from speckv.engine.sampling import SamplingConfig
from speckv.records import TokenSignals


def batch_signals(logits: torch.Tensor) -> list[TokenSignals]:
    """Entropy, top-1 probability and top-1 - top-2 margin of each row of logits."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    top = p.topk(2, dim=-1).values
    rows = torch.stack([entropy, top[:, 0], top[:, 0] - top[:, 1]], dim=-1).tolist()
    return [TokenSignals(*r) for r in rows]


def token_signals(logits: torch.Tensor) -> TokenSignals:
    """batch_signals() of one row."""
    return batch_signals(logits[None])[0]


@dataclass(frozen=True)
class ChainSource:
    """A draft model proposing a chain, one token per forward on its own KV cache."""

    model: Runner
    name: str = "model"
    kinds: tuple[str, ...] = ("model",)

    def __post_init__(self):
        object.__setattr__(self, "model", as_runner(self.model))  # a transformers model is welcome too

    @property
    def vocab(self) -> int:
        return self.model.vocab

    def new(self, vocab: int, sync) -> ChainDrafter:
        return ChainDrafter(self.model, vocab, sync)


class ChainDrafter:
    """Owns one run's draft cache; the cache always holds a prefix of the accepted ids."""

    def __init__(self, model: Runner, vocab: int, sync):
        self.vocab = vocab
        self.sync = sync
        self.cache = model.sequence()

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

        return base.draft_loop(next_proposal, budget, controller, stop_ids, self.sync)

    def rollback(self, length: int) -> None:
        """Drop cached positions beyond `length` (the accepted prefix minus its last token)."""
        self.cache.truncate(length)

    def close(self) -> None:
        self.cache.close()
