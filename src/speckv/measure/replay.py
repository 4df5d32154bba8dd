"""Exact offline replay of any greedy controller on a trace.

The controller object is driven through the same calls, in the same order, as the live engine
(start, budget, keep_drafting after each drafted token below the budget, observe), so a
policy's replayed steps are its live steps. Records are the engine's StepRecords; their
timings are the controller's own measured decision time plus, when a cost model is given, the
predicted draft and verification times.
"""

from __future__ import annotations

import time

from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.errors import SpeckvError
from speckv.measure.records import StepRecord, TokenSignals
from speckv.measure.trace import Trace


def _draft(trace: Trace, p: int, budget: int, controller: Controller, stop_ids: frozenset[int]):
    """The tokens the live drafter would propose at output position p, and the control time."""
    tokens: list[int] = []
    signals: list[TokenSignals] = []
    accepted, miss, control_s = 0, None, 0.0
    while True:
        j = len(tokens)
        if miss is None:  # still on the target's path: teacher-forced draft
            token, sig = trace.draft_tokens[p + j], trace.signals[p + j]
            if token == trace.output_ids[p + j]:
                accepted += 1
            else:
                miss = j
        else:  # after a mismatch: the draft's own continuation
            branch = trace.branches[p + miss]
            k = j - miss - 1
            if k >= len(branch.tokens):
                raise SpeckvError(
                    f"controller {controller.name} drafted past the trace's continuation depth "
                    f"({trace.depth}); collect traces with a larger --depth"
                )
            token, sig = branch.tokens[k], branch.signals[k]
        tokens.append(token)
        signals.append(sig)
        if len(tokens) >= budget or token in stop_ids:
            return tokens, signals, accepted, control_s
        t0 = time.perf_counter()
        go_on = controller.keep_drafting(sig, len(tokens))
        control_s += time.perf_counter() - t0
        if not go_on:
            return tokens, signals, accepted, control_s


def replay(trace: Trace, controller: Controller, cost=None) -> list[StepRecord]:
    """Steps the controller would take live on this trace's prompt (greedy decoding).

    `cost` (a measure.cost.CostModel) fills draft_ms/verify_ms with predictions."""
    out, limit = trace.output_ids, trace.max_new_tokens
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
            tokens, signals, accepted, draft_control_s = _draft(trace, p, budget, controller, trace.stop_ids)
            control_s += draft_control_s
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
