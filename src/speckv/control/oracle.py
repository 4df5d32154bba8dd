"""The oracle: the physical limit of this draft/target pair under a cost model (replay only).

It knows the match bits of the trace it is replayed on, so it never drafts a token that will be
rejected, and it splits each run of matches into steps by dynamic programming over the cost
model: T[p] = min_k cost(k drafts at p) + T[p + k + 1]. Drafting past a mismatch never pays
(the target's correction comes free with the verification), so the optimum is exact here.
"""

from __future__ import annotations

from speckv.control.base import Controller, RequestInfo, StepOutcome


class Oracle(Controller):
    name = "oracle"

    def __init__(self, trace, cost, max_gamma: int = 32):
        self.trace, self.cost, self.max_gamma = trace, cost, max_gamma
        self.plan: list[int] = []
        self.p = 0

    def start(self, request: RequestInfo) -> None:
        out, matches = self.trace.output_ids, self.trace.matches
        n, start, limit = len(out), request.prompt_len, request.max_new_tokens
        run = [0] * (n + 1)  # run[p]: matches in a row from position p
        for p in range(n - 1, -1, -1):
            run[p] = run[p + 1] + 1 if matches[p] else 0
        best = [0.0] * (n + 1)
        self.plan = [0] * n
        for p in range(n - 1, -1, -1):
            ctx = start + p
            options = []
            for k in range(min(run[p], self.max_gamma, limit - p - 1, n - p - 1) + 1):
                ms = self.cost.draft_ms(k, ctx) + self.cost.verify_ms(k + 1, ctx) + self.cost.overhead_ms(p)
                options.append((ms + best[p + k + 1], k))
            best[p], self.plan[p] = min(options)
        self.p = 0

    def budget(self) -> int:
        return self.plan[self.p]

    def observe(self, outcome: StepOutcome) -> None:
        self.p += outcome.accepted + 1
