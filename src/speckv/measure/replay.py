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
from collections.abc import Iterator

from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.control.oracle import Oracle, model_runs, runner_up_ranks
from speckv.drafting import base, tree
from speckv.drafting.base import Draft, Proposal
from speckv.engine.sampling import walk
from speckv.errors import SpeckvError
from speckv.measure.trace import Trace
from speckv.records import StepRecord


class TraceSource:
    """The draft model as a DraftSource, read from a trace (for hybrid replay)."""

    name = "model"
    kinds = ("model",)
    vocab = None

    def __init__(self, trace: Trace, attended: int | None = None):
        self.trace = trace
        self.prompt = attended  # prompt tokens the live draft attends to (a long-context window); None: all

    def attended(self, prompt_len: int) -> int:
        return prompt_len if self.prompt is None else min(prompt_len, self.prompt)

    def new(self, vocab: int = 0, sync=None) -> TraceDrafter:
        return TraceDrafter(self.trace, len(self.trace.prompt_ids) - self.attended(len(self.trace.prompt_ids)))


class TraceDrafter:
    """The live drafter's proposals, read from a trace: on the target's path the teacher-forced
    draft token; after the first mismatch, the draft's own recorded continuation. A Drafter like
    the live ones, run through the same draft loop (drafting.base.draft_loop).

    It keeps the length the live draft's cache would hold (`cached`, in ids; `skip` prompt tokens
    a long-context window never reads count as held), so each draft reports the tokens the live
    one would read first (`Draft.read`: its catch-up less the one token every chain's first
    forward takes), and replay prices the reads live steps pay."""

    def __init__(self, trace: Trace, skip: int = 0):
        self.trace = trace
        self.cached = skip
        self._expanded: tuple[int, set[int]] | None = None  # the last tree: ids before it, nodes forwarded

    def prefill(self, ids: list[int]) -> None:
        """The trace holds every draft state already; the live draft would now hold ids[:-1]."""
        self.cached = max(self.cached, len(ids) - 1)

    def rollback(self, length: int, tree_path: list[int] | None = None) -> None:
        """As the live draft: after a tree it keeps the accepted nodes it had forwarded, then
        drops what lies beyond `length`."""
        if self._expanded is not None:
            base, forwarded = self._expanded
            self._expanded = None
            self.cached = base + sum(1 for n in (tree_path or []) if n in forwarded)
        self.cached = min(self.cached, length)

    def close(self) -> None:
        """Nothing held."""

    def propose(self, ids: list[int], budget: int, controller: Controller, config=None, generator=None,
                stop_ids: frozenset[int] = frozenset()) -> Draft:
        """Draft after ids = prompt + output[:p] (greedy: ids is always on the target's path)."""
        trace, miss, j = self.trace, None, 0
        p = len(ids) - len(trace.prompt_ids)
        read = max(0, len(ids) - self.cached - 1)
        if controller.trees:
            draft = self._tree(p, budget, controller, len(ids))
            draft.read = read
            return draft

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

        draft = base.draft_loop(next_proposal, budget, controller, trace.stop_ids)
        draft.read = read
        self.cached = len(ids) + max(0, len(draft.proposals) - 1)  # every proposal but the last was forwarded
        return draft


    def _tree(self, p: int, budget: int, controller: Controller, held: int) -> Draft:
        """A tree step through drafting.tree.grow, the live loop, with the trace's rows: on the
        target's path the teacher-forced draft row (signals, best tokens); past a mismatch the
        draft's own continuation, whose runners-up are placeholders (never accepted: they hang
        under a rejected node). Only spine trees replay: a beam expands off-path nodes."""
        trace, out = self.trace, self.trace.output_ids
        if trace.top_tokens is None:
            raise SpeckvError("this trace predates the draft's recorded best tokens: recollect it with `speckv trace` "
                              "to replay tree controllers")

        forwarded: list[int] = []  # nodes expanded (forwarded by the live draft), in growth numbering

        def expand(frontier: list[int], seen: tree.Tree) -> list[tree.Row]:
            forwarded.extend(n for n in frontier if n >= 0)
            if len(frontier) > 1 or frontier[0] >= 0 and not controller.spine:
                raise SpeckvError(f"controller {controller.name} grows beam trees, which replay cannot reproduce "
                                  "(their off-path nodes' draft rows are not in a trace): run it live")
            path = []
            node = frontier[0]
            while node >= 0:
                path.append(seen.tokens[node])
                node = seen.parents[node]
            path.reverse()
            miss = next((d for d, tok in enumerate(path) if tok != out[p + d]), None)
            if miss is None:
                q = p + len(path)
                return [tree.Row(trace.signals[q], trace.top_tokens[q], trace.top_logp[q])]
            branch, k = trace.branches[p + miss], len(path) - miss - 1
            if k >= len(branch.tokens):
                raise SpeckvError(f"controller {controller.name} drafted past the trace's continuation depth "
                                  f"({trace.depth}); collect traces with a larger --depth")
            filler = [-2 - i for i in range(tree.TOP - 1)]  # never a token id
            return [tree.Row(branch.signals[k], [branch.tokens[k], *filler], [0.0] + [-1e9 - i for i in range(tree.TOP - 1)])]

        grown, renumber = tree.grow(expand, controller, budget, trace.stop_ids)
        self.cached = held
        self._expanded = (held, {renumber[n] for n in forwarded if n in renumber})
        return Draft(source="model", tree=grown)


def tree_path(draft_tree: tree.Tree, out: list[int], p: int) -> list[int]:
    """The nodes of a replayed tree the target's output accepts: the greedy walk with the output
    as the target's choices."""
    path, _ = walk(draft_tree.tokens, draft_tree.parents,
                   lambda node: out[p + draft_tree.depth_of(node)] if p + draft_tree.depth_of(node) < len(out) else None)
    return path


def trace_source(trace: Trace, drafter: str = "model", attended: int | None = None):
    """The DraftSource a live run with `drafter` (model, lookup[:N_MAX[:N_MIN]], hybrid[:...])
    would have had, with the draft model read from the trace (attending to `attended` prompt
    tokens, as a long-context window does; None: all): lookup is a function of the text, so
    replay runs the live LookupDrafter itself."""
    from speckv.drafting import parse_drafter

    return parse_drafter(drafter).source(TraceSource(trace, attended))


def oracle(trace: Trace, cost, drafter: str = "model", max_gamma: int = 32, tree_width: int = 0,
           attended: int | None = None) -> Oracle:
    """The oracle over the proposers of a drafter spec (model, lookup, hybrid: the
    drafter-choosing oracle), replayed with `replay(trace, oracle, cost, drafter, attended)`;
    `tree_width` > 1 makes it the tree oracle (spine trees offering that many candidates where a
    run ends)."""
    source = trace_source(trace, drafter, attended)
    runs = {}
    if "model" in source.kinds:
        runs["model"] = model_runs(trace.matches)
    if "lookup" in source.kinds:
        lookup = source.lookup if hasattr(source, "lookup") else source
        runs["lookup"] = [k for _, k in lookup_offers(trace, lookup, max_gamma)] + [0]
    runner_up = None
    if tree_width > 1 and "model" in source.kinds:
        if trace.top_tokens is None:
            raise SpeckvError("the tree oracle needs traces that record the draft's best tokens: recollect with `speckv trace`")
        runner_up = runner_up_ranks(trace, tree_width)
    prompt = source.attended(len(trace.prompt_ids)) if "model" in source.kinds else 0
    return Oracle(trace, cost, max_gamma, runs, runner_up, prompt, lazy=getattr(source, "lazy_prompt", False))


def lookup_offers(trace: Trace, lookup, max_gamma: int) -> Iterator[tuple[list[Proposal], int]]:
    """At each output position p: what prompt lookup (a LookupSource) offers after prompt +
    output[:p] (at most max_gamma tokens, never past the output's last token), and how many of those
    tokens the target's output confirms. Lookup is a function of the text, so the trace is enough."""
    drafter, out, prompt = lookup.new(0, None), trace.output_ids, list(trace.prompt_ids)
    for p in range(len(out)):
        offer = drafter.offer(prompt + out[:p], min(max_gamma, len(out) - p - 1))
        k = 0
        while k < len(offer) and offer[k].token == out[p + k]:
            k += 1
        yield offer, k


def replay(trace: Trace, controller: Controller, cost=None, drafter: str = "model",
           attended: int | None = None) -> list[StepRecord]:
    """Steps the controller would take live on this trace's prompt (greedy decoding) with the
    given drafter spec, the draft attending to `attended` prompt tokens (None: all).

    `cost` (a speckv.cost.CostModel) fills draft_ms/verify_ms with predictions, the draft's reads
    (the prompt, catch-ups) included as the live engine's drafters report them."""
    out, limit = trace.output_ids, trace.max_new_tokens
    source = trace_source(trace, drafter, attended)
    proposer = source.new(0, None)
    ids = list(trace.prompt_ids)
    window = source.attended(len(ids)) if attended is not None and "model" in source.kinds else None
    controller.start(RequestInfo(len(trace.prompt_ids), limit, source.kinds, window))
    steps: list[StepRecord] = []
    p = 0
    while p < len(out):
        t0 = time.perf_counter()
        budget = max(0, min(controller.budget(), limit - p - 1))
        control_s = time.perf_counter() - t0
        tokens, signals, accepted, used, size, depth, read, path = [], [], 0, "", 0, 0, 0, None
        if budget:
            if not controller.uses_draft:
                raise SpeckvError(f"controller {controller.name} asked for drafts without a draft model")
            if not steps:  # as the engine: the draft reads the prompt when the first step drafts
                proposer.prefill(ids)
            draft = proposer.propose(ids, budget, controller, None, None, trace.stop_ids)
            tokens, signals, used = draft.tokens, draft.signals, draft.source if draft.size else ""
            size, depth, read = draft.size, draft.depth, draft.read
            if draft.tree is not None:
                path = tree_path(draft.tree, out, p)
                accepted = len(path)
            while accepted < len(tokens) and tokens[accepted] == out[p + accepted]:
                accepted += 1
            control_s += draft.control_ms / 1000
        emitted = len(out[p : p + accepted + 1])
        if budget:
            proposer.rollback(len(ids) + emitted - 1, path)
        t0 = time.perf_counter()
        controller.observe(StepOutcome(budget, size, accepted, tuple(signals), used, depth))
        control_s += time.perf_counter() - t0
        record = StepRecord(
            step=len(steps), context_len=len(trace.prompt_ids) + p, budget=budget, drafted=size,
            accepted=accepted, emitted=emitted, signals=signals, control_ms=control_s * 1000, drafter=used,
            tree_depth=depth, draft_read=read,
        )
        if cost is not None:  # a tree drafts one forward per level
            record.draft_ms = cost.drafter_ms(used, depth or record.drafted, record.context_len, read)
            record.verify_ms = cost.verify_ms(record.drafted + 1, record.context_len)
        steps.append(record)
        ids += out[p : p + emitted]
        p += emitted
    return steps
