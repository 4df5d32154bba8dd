"""Sampling settings and the two acceptance rules (greedy match, speculative sampling).

Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): accept draft token x with
probability min(1, p(x)/q(x)); on rejection resample from norm(max(0, p - q)); on full
acceptance sample a bonus token from p. The output is distributed exactly as the target's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from speckv.errors import SpeckvError


@dataclass(frozen=True)
class SamplingConfig:
    """Names follow transformers' generate(); do_sample=False means greedy."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise SpeckvError(f"temperature must be > 0 (got {self.temperature}); use greedy decoding instead of 0")
        if self.top_k is not None and self.top_k < 1:
            raise SpeckvError(f"top_k must be >= 1 (got {self.top_k})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SpeckvError(f"top_p must be in (0, 1] (got {self.top_p})")

    def warpers(self) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k is not None:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Rows of float32 logits -> the sampling distribution (temperature, top-k, top-p)."""
        return torch.softmax(self.warpers()(None, logits), dim=-1)


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: int  # leading draft tokens kept
    next_token: int  # the target's correction (on rejection) or bonus token (on full acceptance)


def accept_greedy(target_logits: torch.Tensor, drafted: list[int], **_) -> Verdict:
    """Keep the longest prefix on which the draft equals the target's argmax."""
    choice = target_logits.argmax(dim=-1).tolist()
    n = 0
    while n < len(drafted) and drafted[n] == choice[n]:
        n += 1
    return Verdict(n, choice[n])


def accept_speculative(
    target_logits: torch.Tensor,
    drafted: list[int],
    draft_probs: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator,
) -> Verdict:
    """Speculative sampling over k drafted tokens and k+1 target rows."""
    p = config.probs(target_logits)
    k = len(drafted)
    if k:
        idx = torch.arange(k, device=p.device)
        tokens = torch.tensor(drafted, device=p.device)
        ratio = p[idx, tokens] / draft_probs[idx, tokens]
        u = torch.rand(k, generator=generator, device=p.device)
        rejected = (u >= ratio).nonzero()
        if len(rejected):
            n = int(rejected[0])
            residual = (p[n] - draft_probs[n]).clamp_min(0)
            total = residual.sum()
            # p == q on the support: the residual is empty and any draw from p is exact.
            dist = residual / total if total > 0 else p[n]
            return Verdict(n, int(torch.multinomial(dist, 1, generator=generator)))
    return Verdict(k, int(torch.multinomial(p[k], 1, generator=generator)))


@dataclass(frozen=True, slots=True)
class TreeVerdict:
    path: list[int]  # accepted nodes, root's child first
    next_token: int


def walk(tokens: list[int], parents: list[int], choice: Callable[[int], int]) -> tuple[list[int], int]:
    """Greedy acceptance: from the root, follow the child whose token is `choice(node)` (the
    target's token after that node) while there is one. Returns the path and the next token."""
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        kids.setdefault(p, []).append(i)
    path, node = [], -1
    while True:
        want = choice(node)
        nxt = next((c for c in kids.get(node, ()) if tokens[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        node = nxt


def accept_tree_greedy(target_logits: torch.Tensor, tokens: list[int], parents: list[int], **_) -> TreeVerdict:
    """Row 0 is the root's logits, row 1 + i node i's. Follow the child equal to the target's argmax
    while there is one."""
    choice = target_logits.argmax(dim=-1).tolist()
    path, nxt = walk(tokens, parents, lambda node: choice[node + 1])
    return TreeVerdict(path, nxt)


def accept_tree_speculative(target_logits: torch.Tensor, tokens: list[int], parents: list[int],
                            config: SamplingConfig, generator: torch.Generator, **_) -> TreeVerdict:
    """Recursive rejection over deterministic candidates (SpecInfer/EAGLE): at a node, try its
    children in order, accepting child x with probability r(x) under the residual r (the target's
    distribution with every rejected sibling's mass removed, renormalized); if all are rejected,
    sample from the residual. With one-hot draft distributions this is exactly speculative sampling
    applied candidate by candidate, so every emitted token is distributed as the target's."""
    p = config.probs(target_logits)
    kids = _children(parents)
    path, node = [], -1
    while True:
        residual = p[node + 1].clone()
        accepted = None
        for c in kids.get(node, ()):
            u = float(torch.rand((), generator=generator, device=p.device))
            if u < float(residual[tokens[c]]):
                accepted = c
                break
            residual[tokens[c]] = 0.0
            total = residual.sum()
            if not total > 0:  # cannot happen unless p is one-hot on rejected tokens
                residual = p[node + 1]
                break
            residual = residual / total
        if accepted is None:
            return TreeVerdict(path, int(torch.multinomial(residual, 1, generator=generator)))
        path.append(accepted)
        node = accepted


def _children(parents: list[int]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        kids.setdefault(p, []).append(i)
    return kids
