"""Ours: draft a token only while its expected gain in tokens is worth its measured time.

Per drafted token, a logistic model of the draft's signals (trained per pair x compression on
traces) gives p = P(accepted | earlier drafts accepted); S, the probability that every draft so
far survives, is the running product. Stopping now makes the step worth E = 1 + sum(S) tokens in
T ms (cost model: drafts + one verification + loop overhead); one more draft adds about S*p
tokens for one draft token plus one more verified row. Keep drafting while that marginal rate
beats the step's average rate E/T: the stopping rule that maximizes expected tokens per second,
not tokens per step. Before a step it checks, at the request's running acceptance rate, whether
any chain length beats a plain target step, and drafts nothing if not (an NF4 target faster than
its draft). Online: a per-request bias on the logit follows the observed acceptances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.measure.cost import CostModel
from speckv.measure.records import TokenSignals

FEATURES = ["entropy", "top1", "margin"]


@dataclass(frozen=True)
class AcceptanceModel:
    """logit P(accept) = w0 + w . (entropy, top1, margin); `prior` = mean on-path acceptance."""

    weights: tuple[float, float, float, float] = (-3.0, 0.0, 6.0, 0.0)  # untrained: trust top-1
    prior: float = 0.6

    def logit(self, s: TokenSignals) -> float:
        w = self.weights
        return w[0] + w[1] * s.entropy + w[2] * s.top1 + w[3] * s.margin


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -30 else 0.0


class CostAware(Controller):
    def __init__(self, acceptance: AcceptanceModel = AcceptanceModel(), cost: CostModel | None = None,
                 max_gamma: int = 16, lr: float = 0.1, name: str = "cost-aware"):
        self.acceptance = acceptance
        self.cost = cost or CostModel.ratio()
        self.max_gamma, self.lr, self.name = max_gamma, lr, name

    def start(self, request: RequestInfo) -> None:
        self.ctx, self.produced = request.prompt_len, 0
        self.bias, self.alpha = 0.0, self.acceptance.prior

    def _step_costs(self) -> None:
        """Per-step constants at the current context: one draft token, one verified row, the rest."""
        c, ctx = self.cost, self.ctx / 1000
        self.per_draft = c.draft[1] + c.draft[2] * ctx
        self.per_row = c.verify[1] + c.verify[3] * ctx
        self.fixed = c.draft[0] + c.verify[0] + c.verify[2] * ctx + self.per_row + self.cost.overhead_ms(self.produced)

    def _drafting_pays(self) -> bool:
        plain = 1 / (self.fixed - self.cost.draft[0])
        a, tokens, survive = self.alpha, 1.0, 1.0
        for k in range(1, self.max_gamma + 1):
            survive *= a
            tokens += survive
            if tokens / (self.fixed + k * (self.per_draft + self.per_row)) > plain:
                return True
        return False

    def budget(self) -> int:
        self._step_costs()
        if not self._drafting_pays():
            self.alpha += 0.1 * (self.acceptance.prior - self.alpha)  # drift back: probe again later
            return 0
        self.survive, self.tokens = 1.0, 1.0
        return self.max_gamma

    def keep_drafting(self, signals: TokenSignals, drafted: int) -> bool:
        p = _sigmoid(self.acceptance.logit(signals) + self.bias)
        self.survive *= p
        self.tokens += self.survive
        step_ms = self.fixed + drafted * (self.per_draft + self.per_row)
        return self.survive * p * step_ms > self.tokens * (self.per_draft + self.per_row)

    def observe(self, outcome: StepOutcome) -> None:
        self.ctx += outcome.accepted + 1
        self.produced += outcome.accepted + 1
        seen = outcome.signals[: outcome.accepted + 1]  # accepted drafts, then the first rejected one
        for i, s in enumerate(seen):
            y = 1.0 if i < outcome.accepted else 0.0
            self.bias += self.lr * (y - _sigmoid(self.acceptance.logit(s) + self.bias))
            self.alpha += 0.05 * (y - self.alpha)
