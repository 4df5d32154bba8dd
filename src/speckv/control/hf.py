"""transformers' assisted-generation policies, re-implemented behind our interface.

`hf-heuristic[:N]`: the "heuristic" schedule of `AssistedCandidateGenerator`: start at N draft
tokens (transformers' historical default 5), +2 after a step where every draft was accepted,
-1 (floor 1) otherwise.

`hf-confidence[:N]`: N draft tokens (transformers' default 20) with its confidence stopping:
drafting ends after a token whose draft probability is below the threshold (0.4 at first). The
threshold is re-chosen after every step from the ROC curve of (draft probability, accepted)
pairs seen so far, minimizing FPR + 3 FNR, as transformers does when scikit-learn is installed.

transformers keeps this state across generate() calls that reuse one assistant model; here each
request starts afresh (its "heuristic_transient" behaviour), so that runs do not depend on order.
"""

from __future__ import annotations

import numpy as np

from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.records import TokenSignals


class HfHeuristic(Controller):
    def __init__(self, start: int = 5, cap: int = 16):
        self.name = f"hf-heuristic:{start}"
        self.first = start
        self.cap = cap  # ours (transformers has none): keeps steps replayable on depth-15 traces

    def start(self, request: RequestInfo) -> None:
        self.gamma = self.first

    def budget(self) -> int:
        return self.gamma

    def observe(self, outcome: StepOutcome) -> None:
        if not outcome.budget:
            return
        if outcome.accepted == outcome.drafted:
            self.gamma = min(self.gamma + 2, self.cap)
        else:
            self.gamma = max(1, self.gamma - 1)


class HfConfidence(Controller):
    def __init__(self, gamma: int = 20, threshold: float = 0.4):
        self.name = f"hf-confidence:{gamma}"
        self.gamma = gamma
        self.initial = threshold

    def start(self, request: RequestInfo) -> None:
        self.threshold = self.initial
        self.probs: list[float] = []
        self.matches: list[int] = []

    def budget(self) -> int:
        return self.gamma

    def keep_drafting(self, signals: TokenSignals, drafted: int) -> bool:
        return signals.top1 >= self.threshold

    def observe(self, outcome: StepOutcome) -> None:
        if not outcome.drafted:
            return
        # Same bookkeeping as transformers: accepted tokens are positives, the first rejected
        # one a negative, later drafts are dropped.
        self.probs += [s.top1 for s in outcome.signals[: outcome.accepted + 1]]
        self.matches += [1] * outcome.accepted + ([0] if outcome.accepted < outcome.drafted else [])
        if len(self.probs) > 5 and 0 in self.matches and 1 in self.matches:
            from sklearn.metrics import roc_curve

            fpr, tpr, thresholds = roc_curve(self.matches, self.probs)
            self.threshold = float(thresholds[np.argmin(fpr + 3 * (1 - tpr))])
