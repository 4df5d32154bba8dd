"""Exact offline replay of any greedy controller on a trace.

The controller object is driven through the same calls, in the same order, as the live engine
(start, budget, keep_drafting after each drafted token below the budget, observe): drafting goes
through the very draft loop the live drafters use (drafting.base.draft_loop), fed from the trace,
so a policy's replayed steps are its live steps. Records are the engine's StepRecords; their
timings are the controller's own measured decision time plus, when a cost model is given, the
predicted draft and verification times.
"""

from __future__ import annotations

import time

from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.drafting import base
from speckv.drafting.base import Draft, Proposal
from speckv.errors import SpeckvError
from speckv.measure.trace import Trace
from speckv.records import StepRecord


class TraceDrafter:
    """The live drafter's proposals, read from a trace: on the target's path the teacher-forced
    draft token; after the first mismatch, the draft's own recorded continuation. It runs through
    the same draft loop as the live drafters (drafting.base.draft_loop)."""

    def __init__(self, trace: Trace):
        self.trace = trace

    def propose(self, p: int, budget: int, controller: Controller) -> Draft:
        """Draft at output position p (live: after prompt + output[:p])."""
        trace, miss, j = self.trace, None, 0

        def next_proposal() -> Proposal:
            nonlocal miss, j
            if miss is None and trace.draft_tokens[p + j] != trace.output_ids[p + j]:
                miss = j
            if miss is None or j == miss:  # still on the target's path: the teacher-forced draft
                proposal = Proposal(trace.draft_tokens[p + j], trace.signals[p + j])
            else:  # after a mismatch: the draft's own continuation
                branch, k = trace.branches[p + miss], j - miss - 1
                if k >= len(branch.tokens):
                    raise SpeckvError(
                        f"controller {controller.name} drafted past the trace's continuation depth "
                        f"({trace.depth}); collect traces with a larger --depth"
                    )
                proposal = Proposal(branch.tokens[k], branch.signals[k])
            j += 1
            return proposal

        return base.draft_loop(next_proposal, budget, controller, trace.stop_ids)


def replay(trace: Trace, controller: Controller, cost=None) -> list[StepRecord]:
    """Steps the controller would take live on this trace's prompt (greedy decoding).

    `cost` (a measure.cost.CostModel) fills draft_ms/verify_ms with predictions."""
    out, limit = trace.output_ids, trace.max_new_tokens
    drafter = TraceDrafter(trace)
    controller.start(RequestInfo(len(trace.prompt_ids), limit))
    steps: list[StepRecord] = []
    p = 0
    while p < len(out):
        t0 = time.perf_counter()
        budget = max(0, min(controller.budget(), limit - p - 1))
        control_s = time.perf_counter() - t0
        tokens, signals, accepted = [], [], 0
        if budget:
            if not controller.uses_draft:
                raise SpeckvError(f"controller {controller.name} asked for drafts without a draft model")
            draft = drafter.propose(p, budget, controller)
            tokens, signals = draft.tokens, draft.signals
            while accepted < len(tokens) and tokens[accepted] == out[p + accepted]:
                accepted += 1
            control_s += draft.control_ms / 1000
        emitted = len(out[p : p + accepted + 1])
        t0 = time.perf_counter()
        controller.observe(StepOutcome(budget, len(tokens), accepted, tuple(signals)))
        control_s += time.perf_counter() - t0
        record = StepRecord(
            step=len(steps), context_len=len(trace.prompt_ids) + p, budget=budget, drafted=len(tokens),
            accepted=accepted, emitted=emitted, signals=signals, control_ms=control_s * 1000,
        )
        if cost is not None:
            record.draft_ms = cost.draft_ms(record.drafted, record.context_len)
            record.verify_ms = cost.verify_ms(record.drafted + 1, record.context_len)
        steps.append(record)
        p += emitted
    return steps
