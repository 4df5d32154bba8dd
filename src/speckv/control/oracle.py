"""The oracle: the physical limit of this draft/target pair under a cost model (replay only).

It knows, for each proposer it may use, how many of that proposer's tokens the target would
accept at every output position of the trace it is replayed on (the draft model's run of matches;
prompt lookup's copied span checked against the output), so it never drafts a token that will be
rejected, and it splits the output into steps by dynamic programming over the cost model:
T[p] = min over proposers d and k <= runs[d][p] of cost_d(k drafts at p) + T[p + k + 1]. Drafting
past a mismatch never pays (the target's correction comes free with the verification), so the
optimum is exact here. With several proposers it is the drafter-choosing oracle.

It pays what the live draft model reads before drafting (the cost model's read line), as replay
prices it: a model step reads its catch-up less one token, which is the prompt (or the window the
draft attends to) the first time and after that every token committed since the draft's last
chain but two (its last draft and the target's token). So the DP carries one bit, whether a model
step is still to come: while it is, every committed token will be read.

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
                 runner_up: list[int] | None = None, prompt: int | None = None, lazy: bool = False):
        """runs: per proposer, the tokens it would get accepted at each output position (default:
        the draft model's, from the trace's match bits). runner_up: for the tree oracle, at each
        position where a model run ends, the target token's rank among the draft's runners-up
        (1: the second choice; 0: not among them). prompt: the prompt tokens the draft attends to
        (default: all); lazy: the draft reads them in its first chain (hybrid drafting), not in
        the prefill of a first step that drafts."""
        self.trace, self.cost, self.max_gamma = trace, cost, max_gamma
        self.prompt = len(trace.prompt_ids) if prompt is None else prompt
        self.lazy = lazy
        self.runs = runs if runs is not None else {"model": model_runs(trace.matches)}
        self.runner_up = runner_up
        if runner_up is not None:
            self.name = "oracle-tree"
        self.plan: list[tuple[int, str, int]] = []
        self.p = 0

    def start(self, request: RequestInfo) -> None:
        n, start, limit = len(self.trace.output_ids), request.prompt_len, request.max_new_tokens
        cost, r = self.cost, self.cost.read[0] if "model" in self.runs else 0.0
        inf = float("inf")
        # best[s][p]: the least ms from output position p on, where s = 1 says a model step starts at
        # or after p (the draft then reads every token committed before it) and s = 0 that none does.
        best = [[inf] * (n + 1), [inf] * (n + 1)]
        best[0][n] = 0.0
        choice: list[list[tuple]] = [[()] * n, [()] * n]
        for p in range(n - 1, -1, -1):
            ctx, first = start + p, p == 0
            base = cost.overhead_ms(p)
            steps = [(cost.verify_ms(1, ctx) + base, 0, "none", 0)]
            for drafter, run in self.runs.items():
                for k in range(1, min(run[p], self.max_gamma, limit - p - 1, n - p - 1) + 1):
                    steps.append((cost.drafter_ms(drafter, k, ctx) + cost.verify_ms(k + 1, ctx) + base, k, drafter, 0))
            run = self.runs["model"][p] if "model" in self.runs else 0
            j = self.runner_up[p + run] if self.runner_up is not None and p + run < n else 0
            if j and run + 1 <= min(self.max_gamma, limit - p - 1, n - p - 2):
                ms = cost.drafter_ms("model", run + 1, ctx) + cost.verify_ms(run + j + 2, ctx) + base
                steps.append((ms, run + 1, "model", j))
            for ms, k, drafter, j in steps:
                end = p + k + 1
                if drafter == "model":  # it reads its catch-up less one token; 2 stay unread after it
                    own = -r + (r * (self.prompt if self.lazy else 1) if first else 0.0)
                    for after, extra in ((0, 0.0), (1, 2 * r)):
                        total = ms + own + extra + best[after][end]
                        if total < best[1][p]:
                            best[1][p], choice[1][p] = total, (k, drafter, j, after)
                else:  # its tokens are read by a later model step, if any
                    for s in (0, 1):
                        extra = s * r * (end - p + (self.prompt if first else 0))
                        total = ms + extra + best[s][end]
                        if total < best[s][p]:
                            best[s][p], choice[s][p] = total, (k, drafter, j, s)
        self.plan = [(0, "none", 0)] * n
        p, s = 0, int(best[1][0] < best[0][0])
        self.expected_ms = best[s][0]  # what its replay costs under the cost model, prefill aside
        while p < n:
            k, drafter, j, after = choice[s][p]
            self.plan[p] = (k, drafter, j)
            p, s = p + k + 1, after
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
