"""SpecKV (arXiv 2605.02888): an MLP-16 over the draft's signals picks gamma in {2,4,6,8}.

Features as in the paper: mean/max draft entropy, mean/min draft confidence, compression
(fp16/bf16=0, int8=1, nf4=2), gamma; target: the step's acceptance rate. Per step it takes the
gamma with the highest predicted tokens/step, clip(acceptance) * gamma + 1 ("SpecKV-fast").
The paper computes the features from the very drafts whose length it chooses, which cannot run
live; here they come from the previous step's drafts (gamma 4 before the first). Weights are
trained by `speckv train` and evaluated in plain Python (16 hidden units: microseconds).
"""

from __future__ import annotations

from speckv.control.base import Controller, RequestInfo, StepOutcome

FEATURES = ["mean_draft_entropy", "mean_draft_confidence", "max_draft_entropy", "min_draft_confidence", "comp_enc", "gamma"]
COMPRESSION_CODE = {"fp32": 0, "bf16": 0, "fp16": 0, "int8": 1, "nf4": 2}


def step_features(signals, compression_code: float) -> list[float]:
    ent = [s.entropy for s in signals]
    conf = [s.top1 for s in signals]
    return [sum(ent) / len(ent), sum(conf) / len(conf), max(ent), min(conf), compression_code]


class SpeckvMLP(Controller):
    name = "speckv"

    def __init__(self, hidden: list[list[float]], hidden_bias: list[float], out: list[float], out_bias: float,
                 compression: str, gammas: tuple[int, ...] = (2, 4, 6, 8), first: int = 4):
        self.w1, self.b1, self.w2, self.b2 = hidden, hidden_bias, out, out_bias  # w1: inputs x hidden
        self.code = COMPRESSION_CODE[compression]
        self.gammas, self.first = gammas, first

    def predict(self, x: list[float]) -> float:
        """Predicted acceptance rate (sklearn MLPRegressor forward: relu hidden, identity out)."""
        h = [max(0.0, b + sum(xi * row[j] for xi, row in zip(x, self.w1))) for j, b in enumerate(self.b1)]
        return self.b2 + sum(hj * wj for hj, wj in zip(h, self.w2))

    def start(self, request: RequestInfo) -> None:
        self.gamma = self.first

    def budget(self) -> int:
        return self.gamma

    def observe(self, outcome: StepOutcome) -> None:
        if not outcome.signals:
            return
        x = step_features(outcome.signals, self.code)
        scores = [min(1.0, max(0.0, self.predict(x + [g]))) * g + 1 for g in self.gammas]
        self.gamma = self.gammas[scores.index(max(scores))]
