"""The oracle: the physical limit of this draft/target pair under a cost model (replay only).

It knows, for each proposer it may use, how many of that proposer's tokens the target would
accept at every output position of the trace it is replayed on (the draft model's run of matches;
prompt lookup's copied span checked against the output), so it never drafts a token that will be
rejected, and it splits the output into steps by dynamic programming over the cost model:
T[p] = min over proposers d and k <= runs[d][p] of cost_d(k drafts at p) + T[p + k + 1]. Drafting
past a mismatch never pays (the target's correction comes free with the verification), so the
optimum is exact here. With several proposers it is the drafter-choosing oracle.

The tree oracle (`runner_up`, the rank of the target's token among the draft's runners-up where
the model's run ends) may also end a model run with a spine tree: the run's r tokens, then the
wrong top-1 and the runners-up down to the target's rank j at level r + 1, so r + 1 tokens are
accepted for r + j + 1 verified nodes and r + 1 draft forwards. Its steps replay exactly (spine
trees).
"""

from __future__ import annotations

from speckv.control.base import Controller, RequestInfo, StepOutcome


class Oracle(Controller):
    name = "oracle"

    spine = True  # its tree steps are spine trees

    def __init__(self, trace, cost, max_gamma: int = 32, runs: dict[str, list[int]] | None = None,
                 runner_up: list[int] | None = None):
        """runs: per proposer, the tokens it would get accepted at each output position (default:
        the draft model's, from the trace's match bits). runner_up: for the tree oracle, at each
        position where a model run ends, the target token's rank among the draft's runners-up
        (1: the second choice; 0: not among them)."""
        self.trace, self.cost, self.max_gamma = trace, cost, max_gamma
        self.runs = runs if runs is not None else {"model": model_runs(trace.matches)}
        self.runner_up = runner_up
        if runner_up is not None:
            self.name = "oracle-tree"
        self.plan: list[tuple[int, str, int]] = []
        self.p = 0

    def start(self, request: RequestInfo) -> None:
        n, start, limit = len(self.trace.output_ids), request.prompt_len, request.max_new_tokens
        best = [0.0] * (n + 1)
        self.plan = [(0, "none", 0)] * n
        for p in range(n - 1, -1, -1):
            ctx = start + p
            plain = self.cost.verify_ms(1, ctx) + self.cost.overhead_ms(p)
            options = [(plain + best[p + 1], 0, "none", 0)]
            for drafter, run in self.runs.items():
                for k in range(1, min(run[p], self.max_gamma, limit - p - 1, n - p - 1) + 1):
                    ms = self.cost.drafter_ms(drafter, k, ctx) + self.cost.verify_ms(k + 1, ctx) + self.cost.overhead_ms(p)
                    options.append((ms + best[p + k + 1], k, drafter, 0))
            r = self.runs["model"][p] if "model" in self.runs else 0
            j = self.runner_up[p + r] if self.runner_up is not None and p + r < n else 0
            if j and r + 1 <= min(self.max_gamma, limit - p - 1, n - p - 2):
                ms = (self.cost.drafter_ms("model", r + 1, ctx) + self.cost.verify_ms(r + j + 2, ctx)
                      + self.cost.overhead_ms(p))
                options.append((ms + best[p + r + 2], r + 1, "model", j))
            best[p], k, drafter, j = min(options)
            self.plan[p] = (k, drafter, j)
        self.p = 0

    @property
    def trees(self) -> bool:
        """This step is a spine tree (the run, then runners-up at its last level)."""
        return bool(self.plan) and self.p < len(self.plan) and self.plan[self.p][2] > 0

    def tree_width(self, level: int, spine) -> int:
        k, _, j = self.plan[self.p]
        return 1 if level < k else j + 1 if level == k else 0

    def budget(self) -> int:
        return self.plan[self.p][0]

    def choose(self, lookup) -> str:
        return self.plan[self.p][1]

    def observe(self, outcome: StepOutcome) -> None:
        self.p += outcome.accepted + 1


def runner_up_ranks(trace, width: int) -> list[int]:
    """At each output position, the rank (1..width-1) of the target's token among the draft's
    runners-up there, 0 when it is the top-1 or not among them (needs recorded best tokens)."""
    out = []
    for t, top in zip(trace.output_ids, trace.top_tokens):
        out.append(next((i for i, tok in enumerate(top[1:width], 1) if tok == t), 0))
    return out


def model_runs(matches: list[bool]) -> list[int]:
    """run[p]: the draft model's matches in a row from output position p."""
    run = [0] * (len(matches) + 1)
    for p in range(len(matches) - 1, -1, -1):
        run[p] = run[p + 1] + 1 if matches[p] else 0
    return run
