"""The oracle: the physical limit of this draft/target pair under a cost model (replay only).

It knows, for each proposer it may use, how many of that proposer's tokens the target would
accept at every output position of the trace it is replayed on (the draft model's run of matches;
prompt lookup's copied span checked against the output), so it never drafts a token that will be
rejected, and it splits the output into steps by dynamic programming over the cost model:
T[p] = min over proposers d and k <= runs[d][p] of cost_d(k drafts at p) + T[p + k + 1]. Drafting
past a mismatch never pays (the target's correction comes free with the verification), so the
optimum is exact here. With several proposers it is the drafter-choosing oracle.
"""

from __future__ import annotations

from speckv.control.base import Controller, RequestInfo, StepOutcome


class Oracle(Controller):
    name = "oracle"

    def __init__(self, trace, cost, max_gamma: int = 32, runs: dict[str, list[int]] | None = None):
        """runs: per proposer, the tokens it would get accepted at each output position (default:
        the draft model's, from the trace's match bits)."""
        self.trace, self.cost, self.max_gamma = trace, cost, max_gamma
        self.runs = runs if runs is not None else {"model": model_runs(trace.matches)}
        self.plan: list[tuple[int, str]] = []
        self.p = 0

    def start(self, request: RequestInfo) -> None:
        n, start, limit = len(self.trace.output_ids), request.prompt_len, request.max_new_tokens
        best = [0.0] * (n + 1)
        self.plan = [(0, "none")] * n
        for p in range(n - 1, -1, -1):
            ctx = start + p
            plain = self.cost.verify_ms(1, ctx) + self.cost.overhead_ms(p)
            options = [(plain + best[p + 1], 0, "none")]
            for drafter, run in self.runs.items():
                for k in range(1, min(run[p], self.max_gamma, limit - p - 1, n - p - 1) + 1):
                    ms = self.cost.drafter_ms(drafter, k, ctx) + self.cost.verify_ms(k + 1, ctx) + self.cost.overhead_ms(p)
                    options.append((ms + best[p + k + 1], k, drafter))
            best[p], k, drafter = min(options)
            self.plan[p] = (k, drafter)
        self.p = 0

    def budget(self) -> int:
        return self.plan[self.p][0]

    def choose(self, lookup) -> str:
        return self.plan[self.p][1]

    def observe(self, outcome: StepOutcome) -> None:
        self.p += outcome.accepted + 1


def model_runs(matches: list[bool]) -> list[int]:
    """run[p]: the draft model's matches in a row from output position p."""
    run = [0] * (len(matches) + 1)
    for p in range(len(matches) - 1, -1, -1):
        run[p] = run[p + 1] + 1 if matches[p] else 0
    return run
