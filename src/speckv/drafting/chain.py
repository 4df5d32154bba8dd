"""Chain drafting: the draft model proposes tokens one at a time with its own KV cache.

A ChainDrafter is one run's draft state (Engine.run makes a fresh one per run), so runs that
share a draft model never share, reset or crop each other's cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from speckv.control.base import Controller
from speckv.engine.kv import cached_logits, crop_to
from speckv.engine.sampling import SamplingConfig
from speckv.measure.records import TokenSignals


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)  # sampling only: q rows
    signals: list[TokenSignals] = field(default_factory=list)
    draft_ms: float = 0.0
    control_ms: float = 0.0


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


class ChainDrafter:
    """Owns one run's draft cache; the cache always holds a prefix of the accepted ids."""

    def __init__(self, model: torch.nn.Module, vocab: int, sync):
        self.model = model
        self.vocab = vocab
        self.sync = sync
        self.cache = DynamicCache(config=model.config)

    def _forward(self, tokens: list[int]) -> torch.Tensor:
        return cached_logits(self.model, self.cache, tokens, 1, self.vocab)[0]

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
        draft = Draft()
        feed = ids[self.cache.get_seq_length():]  # catch up on tokens the draft has not seen
        while True:
            t0 = time.perf_counter()
            logits = self._forward(feed)
            signals = token_signals(logits)
            if config.do_sample:
                q = config.probs(logits[None])[0]
                token = int(torch.multinomial(q, 1, generator=generator))
                draft.probs.append(q)
            else:
                token = int(logits.argmax())
            self.sync()
            t1 = time.perf_counter()
            draft.draft_ms += (t1 - t0) * 1000
            draft.tokens.append(token)
            draft.signals.append(signals)
            if len(draft.tokens) >= budget or token in stop_ids:
                break
            go_on = controller.keep_drafting(signals, len(draft.tokens))
            draft.control_ms += (time.perf_counter() - t1) * 1000
            if not go_on:
                break
            feed = [token]
        return draft

    def rollback(self, length: int) -> None:
        """Drop cached positions beyond `length` (the accepted prefix minus its last token)."""
        crop_to(self.cache, length)
