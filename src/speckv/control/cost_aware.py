"""Ours: draft a token only while its expected gain in tokens is worth its measured time.

Per drafted token, a logistic model of the draft's signals (trained per pair x compression on
traces) gives p = P(accepted | earlier drafts accepted); S, the probability that every draft so
far survives, is the running product. One more draft adds about S*p expected tokens (p of the
current token stands in for the next one's) for c ms: one draft token plus one more verified
row (cost model). Maximizing long-run tokens per second is a renewal-reward problem, so by
Dinkelbach's argument a step should keep drafting while S*p > R*c, where R is the achievable
rate; R is tracked per request as the ratio of moving averages of tokens and ms per step
(online adaptation), starting from the rate the prior acceptance would give. Before a step it
checks, at the request's running acceptance rate, whether any chain length beats a plain target
step, and drafts nothing if not (an NF4 target faster than its draft). Online, a per-request bias
on the logit follows the observed acceptances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.measure.cost import CostModel
from speckv.records import TokenSignals

FEATURES = ["entropy", "top1", "margin", "log1m_top1"]


@dataclass(frozen=True)
class AcceptanceModel:
    """logit P(accept) = w0 + w . (entropy, top1, margin, log(1 - top1)); `prior` = mean on-path
    acceptance. The log(1 - top1) term lets P approach 1 as fast as the draft's confidence does
    (a logistic in top1 alone under-predicts the >0.97 bins, where most code tokens sit, and so
    stops long chains too early)."""

    weights: tuple[float, ...] = (-1.0, 0.0, 1.0, 0.0, -1.0)  # untrained: roughly P = top1
    prior: float = 0.6

    def logit(self, s: TokenSignals) -> float:
        w = self.weights
        return w[0] + w[1] * s.entropy + w[2] * s.top1 + w[3] * s.margin + w[4] * log1m(s.top1)


def log1m(top1: float) -> float:
    return math.log1p(-min(top1, 1 - 1e-6))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -30 else 0.0


class CostAware(Controller):
    def __init__(self, acceptance: AcceptanceModel = AcceptanceModel(), cost: CostModel | None = None,
                 max_gamma: int = 16, lr: float = 0.1, name: str = "cost-aware"):
        self.acceptance = acceptance
        self.cost = cost or CostModel.ratio()
        self.max_gamma, self.lr, self.name = max_gamma, lr, name

    def start(self, request: RequestInfo) -> None:
        self.prompt_len, self.produced = request.prompt_len, 0
        self.bias, self.alpha = 0.0, self.acceptance.prior
        self.avg_tokens = self.avg_ms = None  # moving averages per step: the running rate R

    def _step_costs(self) -> None:
        """Per-step costs at the current context, from the cost model: a plain target step, and
        what a chain adds: a fixed drafting cost plus, per draft, one draft token and one verified row."""
        c, ctx = self.cost, self.prompt_len + self.produced
        self.plain = c.verify_ms(1, ctx) + c.overhead_ms(self.produced)
        self.per_draft = c.draft_ms(2, ctx) - c.draft_ms(1, ctx)
        self.per_row = c.verify_ms(2, ctx) - c.verify_ms(1, ctx)
        self.fixed = self.plain + c.draft_ms(1, ctx) - self.per_draft  # a chain's time without its drafts

    def _best_chain_rate(self) -> tuple[float, float]:
        """(best chain tokens/ms at the running acceptance rate, plain target step tokens/ms)."""
        plain = 1 / self.plain
        a, tokens, survive, best = self.alpha, 1.0, 1.0, 0.0
        for k in range(1, self.max_gamma + 1):
            survive *= a
            tokens += survive
            best = max(best, tokens / (self.fixed + k * (self.per_draft + self.per_row)))
        return best, plain

    def budget(self) -> int:
        self._step_costs()
        chain, plain = self._best_chain_rate()
        if self.avg_ms is None:  # a pseudo-step at the prior's rate seeds the moving averages
            self.avg_ms = self.fixed + 4 * (self.per_draft + self.per_row)
            self.avg_tokens = max(chain, plain) * self.avg_ms
        if chain <= plain:
            self.alpha += 0.1 * (self.acceptance.prior - self.alpha)  # drift back: probe again later
            return 0
        self.survive = 1.0
        self.threshold = self.avg_tokens / self.avg_ms * (self.per_draft + self.per_row)
        return self.max_gamma

    def keep_drafting(self, signals: TokenSignals, drafted: int) -> bool:
        p = _sigmoid(self.acceptance.logit(signals) + self.bias)
        self.survive *= p
        return self.survive * p > self.threshold

    def observe(self, outcome: StepOutcome) -> None:
        emitted = outcome.accepted + 1
        step_ms = self.fixed + outcome.drafted * (self.per_draft + self.per_row) if outcome.budget else self.plain
        self.avg_tokens = 0.8 * self.avg_tokens + 0.2 * emitted
        self.avg_ms = 0.8 * self.avg_ms + 0.2 * step_ms
        self.produced += emitted
        seen = outcome.signals[: outcome.accepted + 1]  # accepted drafts, then the first rejected one
        for i, s in enumerate(seen):
            y = 1.0 if i < outcome.accepted else 0.0
            self.bias += self.lr * (y - _sigmoid(self.acceptance.logit(s) + self.bias))
            self.alpha += 0.05 * (y - self.alpha)
