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

With more than one proposer (hybrid drafting) the same prices choose between them per step: prompt
lookup's offer is free to inspect, its tokens cost one verified row each plus the cost model's
lookup line, and its acceptance has its own logistic model over lookup's signals (match length,
share of agreeing occurrences, position in the copied span); the step drafts from whichever of
lookup, the model's chain or nothing gives the most tokens per ms. A model chain also pays to read
what the draft has not seen (the cost model's read line): the tokens lookup got accepted since the
model's last chain in full, the prompt in shares (it serves every later chain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.cost import CostModel
from speckv.errors import SpeckvError
from speckv.records import TokenSignals

FEATURES = ["entropy", "top1", "margin", "log1m_top1"]
LOOKUP_FEATURES = ["log_match_len", "match_len", "top1", "margin", "entropy", "index", "log1p_index"]


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


@dataclass(frozen=True)
class LookupAcceptance:
    """logit P(a copied token is accepted | the ones before it were) = w0 + w . lookup_features().
    The default was fitted on 41k lookup proposals along the committed evaluation's training traces
    (code, math, chat, summarization at bf16/int8/nf4; AUC 0.90 on its bf16 test traces): long
    matches and late positions in a span that has held so far are accepted most."""

    weights: tuple[float, ...] = (-1.307, 1.143, -0.069, -0.153, 1.381, -0.715, 0.048, 0.441)

    def __post_init__(self) -> None:  # zip() in logit() would silently drop a feature or a weight
        if len(self.weights) != len(LOOKUP_FEATURES) + 1:
            raise SpeckvError(f"lookup acceptance needs {len(LOOKUP_FEATURES) + 1} weights (intercept, "
                              f"{', '.join(LOOKUP_FEATURES)}); got {len(self.weights)}")

    def logit(self, s: TokenSignals, index: int) -> float:
        w = self.weights
        return w[0] + sum(a * b for a, b in zip(w[1:], lookup_features(s, index)))


def lookup_features(s: TokenSignals, index: int) -> tuple[float, ...]:
    """LOOKUP_FEATURES of a copied token at `index` in its span: what the model predicts from and
    what training (control/train.py) fits on, written once. The match length enters both as is
    (capped) and as its log, the index likewise: acceptance climbs steeply over the first few
    matched tokens and then saturates."""
    return (math.log(max(s.match_len, 1)), min(s.match_len, 8), s.top1, s.margin, s.entropy, min(index, 8),
            math.log1p(index))


def lookup_rate(cost: CostModel, ctx: int = 300) -> float:
    """How fast a request's lookup bias follows its own acceptances: faster where a failed copy
    costs more. A copied token that fails costs one more verified row, (verify(2) - verify(1)) /
    verify(1) of a plain step: about 3% at torch bf16 (verification is nearly flat in width there),
    40-66% on llama.cpp Q4_K_M. Replayed on the committed bf16 traces at each backend's probed
    costs, 0.1 was best at the first (2.55x the target alone vs 2.51x at 1.0) and 0.6-1.0 at the
    second (1.11x vs 1.09x at 0.1): hence 1.5x that waste, between 0.1 and 1."""
    one = cost.verify_ms(1, ctx)
    waste = (cost.verify_ms(2, ctx) - one) / one if one > 0 else 0.0
    return min(1.0, max(0.1, 1.5 * waste))


def log1m(top1: float) -> float:
    return math.log1p(-min(top1, 1 - 1e-6))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -30 else 0.0


class CostAware(Controller):
    def __init__(self, acceptance: AcceptanceModel = AcceptanceModel(), cost: CostModel | None = None,
                 max_gamma: int = 16, lr: float = 0.1, name: str = "cost-aware",
                 lookup: LookupAcceptance = LookupAcceptance(), lookup_lr: float | None = None):
        self.acceptance, self.lookup = acceptance, lookup
        self.cost = cost or CostModel.ratio()
        self.max_gamma, self.lr, self.name = max_gamma, lr, name
        self.lookup_lr = lookup_rate(self.cost) if lookup_lr is None else lookup_lr

    def start(self, request: RequestInfo) -> None:
        self.prompt_len, self.produced, self.limit = request.prompt_len, 0, request.max_new_tokens
        self.draft_prompt = request.draft_context  # the draft may attend to less (a long-context working cache)
        self.model_at = None  # the context the draft model has read up to (None: not even the prompt yet)
        self.drafters = request.drafters
        self.bias, self.alpha = 0.0, self.acceptance.prior
        self.lookup_bias = 0.0
        self.avg_tokens = self.avg_ms = None  # moving averages per step: the running rate R

    def _step_costs(self) -> None:
        """Per-step costs at the current context, from the cost model: `chain_ms[k]` and
        `lookup_ms[k]`, a whole step that drafts k tokens from the model or by lookup (k = 0: a
        plain target step). Whole steps, not a per-token rate: the verification of k + 1 tokens
        is jagged in k where the backend picks kernels by batch size."""
        c, ctx, draft_ctx = self.cost, self.prompt_len + self.produced, self.draft_prompt + self.produced
        base = c.overhead_ms(self.produced)
        ks = range(self.max_gamma + 1)
        read = self._read_ms(ctx)
        self.chain_ms = [base + c.verify_ms(k + 1, ctx) + c.draft_ms(k, draft_ctx) + read * (k > 0) for k in ks]
        self.lookup_ms = [base + c.verify_ms(k + 1, ctx) + c.lookup_ms(k) for k in ks]
        self.plain = self.chain_ms[0]

    def _read_ms(self, ctx: int) -> float:
        """What the model's next chain pays first to read what it has not seen. A catch-up (the
        tokens lookup or plain steps added since its last chain) is this step's cost. The prompt,
        read once, serves every later chain: the step is charged its share, the tokens a step
        yields over the tokens still to come (the first chain of a short answer pays most of it)."""
        if "model" not in self.drafters:
            return 0.0
        if self.model_at is not None:
            return self.cost.read_ms(ctx - self.model_at)
        per_step = self.avg_tokens if self.avg_tokens is not None else 1 / (1 - min(self.acceptance.prior, 0.9))
        share = min(1.0, per_step / max(1, self.limit - self.produced))
        return self.cost.read_ms(self.draft_prompt) * share + self.cost.read_ms(self.produced)

    def _best_chain_rate(self) -> tuple[float, float]:
        """(best chain tokens/ms at the running acceptance rate, plain target step tokens/ms)."""
        plain = 1 / self.plain
        a, tokens, survive, best = self.alpha, 1.0, 1.0, 0.0
        for k in range(1, self.max_gamma + 1):
            survive *= a
            tokens += survive
            best = max(best, tokens / self.chain_ms[k])
        return best, plain

    def _marginal(self, costs: list[float], k: int) -> float:
        """What drafting token k + 1 adds to a step of k, smoothed over the next few lengths (a
        kernel switch can make one more row free, or one fewer dearer): the cheapest average
        price per token of going from k to any of k + 1 .. k + 4."""
        top = min(len(costs) - 1, k + 4)
        if k >= top:
            return float("inf")
        return max(1e-3, min((costs[j] - costs[k]) / (j - k) for j in range(k + 1, top + 1)))

    def budget(self) -> int:
        self._step_costs()
        chain, plain = self._best_chain_rate()
        self.model_ok = "model" in self.drafters and chain > plain
        self.chain_rate, self.plain_rate = chain, plain
        if self.avg_ms is None:  # a pseudo-step at the prior's rate seeds the moving averages
            self.avg_ms = self.chain_ms[min(4, self.max_gamma)]
            self.avg_tokens = max(chain, plain) * self.avg_ms
        self.survive = 1.0
        self.rate = self.avg_tokens / self.avg_ms  # R: what a token's time is worth
        self.lookup_span = self.max_gamma
        if not self.model_ok:
            self.alpha += 0.1 * (self.acceptance.prior - self.alpha)  # drift back: probe again later
            if "lookup" not in self.drafters:
                return 0
        return self.max_gamma

    def _p_lookup(self, signals: TokenSignals, index: int) -> float:
        return _sigmoid(self.lookup.logit(signals, index) + self.lookup_bias)

    def choose(self, lookup: tuple[TokenSignals, ...]) -> str:
        """The proposer with the most expected tokens per ms this step (lookup's rate at its best
        span length, which the step then drafts; the model chain's at the running acceptance
        rate; a plain step)."""
        best, tokens, survive = 0.0, 1.0, 1.0
        for i, s in enumerate(lookup[: self.max_gamma]):
            survive *= self._p_lookup(s, i)
            tokens += survive
            rate = tokens / self.lookup_ms[i + 1]
            if rate > best:
                best, self.lookup_span = rate, i + 1
        rates = {"none": self.plain_rate, "model": self.chain_rate if self.model_ok else 0.0, "lookup": best}
        return max(rates, key=rates.get)

    def keep_drafting(self, signals: TokenSignals, drafted: int) -> bool:
        if signals.match_len:  # a copied token: lookup's whole offer was priced in choose()
            return drafted < self.lookup_span
        p = _sigmoid(self.acceptance.logit(signals) + self.bias)
        self.survive *= p
        return self.survive * p > self.rate * self._marginal(self.chain_ms, drafted)

    def observe(self, outcome: StepOutcome) -> None:
        emitted = outcome.accepted + 1
        k = min(outcome.drafted, self.max_gamma)
        step_ms = (self.lookup_ms if outcome.drafter == "lookup" else self.chain_ms)[k]
        self.avg_tokens = 0.8 * self.avg_tokens + 0.2 * emitted
        self.avg_ms = 0.8 * self.avg_ms + 0.2 * step_ms
        self.produced += emitted
        if outcome.drafter == "model":
            self.model_at = self.prompt_len + self.produced
        seen = outcome.signals[: outcome.accepted + 1]  # accepted drafts, then the first rejected one
        for i, s in enumerate(seen):
            y = 1.0 if i < outcome.accepted else 0.0
            if s.match_len:
                self.lookup_bias += self.lookup_lr * (y - self._p_lookup(s, i))
            else:
                self.bias += self.lr * (y - _sigmoid(self.acceptance.logit(s) + self.bias))
                self.alpha += 0.05 * (y - self.alpha)
