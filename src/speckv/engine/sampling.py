"""Sampling settings and the two acceptance rules (greedy match, speculative sampling).

Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): accept draft token x with
probability min(1, p(x)/q(x)); on rejection resample from norm(max(0, p - q)); on full
acceptance sample a bonus token from p. The output is distributed exactly as the target's.
"""

from __future__ import annotations

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
