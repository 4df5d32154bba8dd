"""Cost-aware trees: cost-aware's prices (control/cost_aware.py) applied to each level of a draft
tree, deciding its width and where it stops.

At level L the policy sees the draft distribution the spine's next node comes from. With S the
probability that the spine survives so far and a = P(its top-1 is accepted) from the acceptance
model, a width-w level adds about S * (a + sibling share) expected tokens, where the j-th sibling is
accepted with about (1 - a) * q_j / (1 - q_1) (the target's choice, once it is not the draft's
first, follows the rest of the draft's distribution: q_2 = top1 - margin is known, later siblings
are taken to halve), and an accepted sibling is worth 1 + alpha tokens (its own child, kept in the
beam, is accepted at the running rate alpha). The level costs its extra verified nodes (the cost
model's per-n verification curve) plus one draft forward; the policy keeps the width whose gain
beats the running rate R times that cost by most, and ends the tree when none does. R, the online
bias and the costs are cost-aware's own. Off a tree-capable backend the same object drafts
cost-aware chains.
"""

from __future__ import annotations

from speckv.control.base import StepOutcome
from speckv.control.cost_aware import CostAware, _sigmoid
from speckv.records import TokenSignals

WIDTHS = (1, 2, 3, 4)
MAX_NODES = 32


class CostTree(CostAware):
    trees = True

    def budget(self) -> int:
        depth = super().budget()
        self.nodes, self.survive = 0, 1.0
        return depth if self.model_ok else 0

    def _verify(self, n: int) -> float:
        ctx = self.prompt_len + self.produced
        return self.cost.verify_ms(n + 1, ctx)

    def tree_width(self, level: int, spine: tuple[TokenSignals, ...]) -> int:
        if level == 1:
            self.nodes, self.survive = 0, 1.0
        s = spine[-1]
        a = _sigmoid(self.acceptance.logit(s) + self.bias)
        rest = max(1e-6, 1 - s.top1)
        share = (s.top1 - s.margin) / rest  # the second choice's share of the non-first mass
        level_ms = self.cost.draft_ms(1, self.draft_prompt + self.produced)  # one draft forward over the frontier
        best_w, best_value = 0, 0.0
        gain = self.survive * a
        for w in WIDTHS:
            if w > 1:  # an accepted sibling usually carries on one more level in the beam: (1 + alpha)
                gain += self.survive * (1 - a) * min(1.0, share * 0.5 ** (w - 2)) * (1 + self.alpha)
            if self.nodes + w > MAX_NODES:
                break
            cost = self._verify(self.nodes + w) - self._verify(self.nodes) + level_ms
            value = gain - self.rate * max(cost, 1e-3)
            if value > best_value:
                best_w, best_value = w, value
        self.nodes += best_w
        self.survive *= a
        return best_w

    def observe(self, outcome: StepOutcome) -> None:
        if not outcome.tree_depth:
            return super().observe(outcome)
        c = self.cost
        step_ms = (c.overhead_ms(self.produced) + self._verify(outcome.drafted)
                   + c.draft_ms(outcome.tree_depth, self.draft_prompt + self.produced))
        self.avg_tokens = 0.8 * self.avg_tokens + 0.2 * (outcome.accepted + 1)
        self.avg_ms = 0.8 * self.avg_ms + 0.2 * step_ms
        self.produced += outcome.accepted + 1
        for i, s in enumerate(outcome.signals[: outcome.accepted + 1]):  # the spine, as far as the path went
            y = 1.0 if i < outcome.accepted else 0.0
            self.bias += self.lr * (y - _sigmoid(self.acceptance.logit(s) + self.bias))
            self.alpha += 0.05 * (y - self.alpha)
