"""Hybrid drafting: per step the controller picks prompt lookup, the draft model or nothing.

Lossless (greedy in float32, speculative sampling in distribution, each with a variant that must
fail), replayed step for step, and priced: a cost-aware controller's choice follows the costs.
"""

from dataclasses import replace

import pytest
import torch

from speckv.control import make_controller
from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.control.cost_aware import CostAware
from speckv.drafting import parse_drafter
from speckv.drafting.chain import ChainSource
from speckv.engine import Engine, SamplingConfig
from speckv.errors import SpeckvError
from speckv.cost import CalibrationRun, CostModel
from speckv.measure.replay import oracle, replay
from speckv.measure.trace import collect_trace
from speckv.records import StepRecord, TokenSignals

from conftest import tiny_model
from test_sampling import check_sampler

CONTROLLERS = ["fixed:3", "hf-heuristic:2", "p-min:8:0.5", "auto"]
#: a machine where a draft token costs 40% of a target forward and a verified row 3%
COST = CostModel((0.0, 40.0, 0.0), (100.0, 3.0, 0.0, 0.0), (0.0, 0.0), (0.0, 0.0), {}, (0.05, 0.01))


def hybrid(pair):
    return Engine(pair[0], parse_drafter("hybrid").source(ChainSource(pair[1])))


def prompts(n=6, seed=1):
    """Random prompts with a repeated stretch, so lookup has something to copy."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        head = torch.randint(0, 64, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen).tolist()
        out.append(head + head[:4] + head)
    return out


def shape(steps):
    return [(s.context_len, s.budget, s.drafted, s.accepted, s.emitted, s.drafter, s.draft_read) for s in steps]


def greedy(engine, prompt, controller, limit=30, stop=frozenset()):
    events = list(engine.run(prompt, controller, SamplingConfig(), limit, stop))
    return [t for e in events for t in e.tokens], [e.record for e in events]


@pytest.mark.parametrize("spec", CONTROLLERS)
def test_greedy_hybrid_is_the_targets_greedy_output(tiny_pair, spec):
    alone = Engine(tiny_pair[0])
    used = set()
    for prompt in prompts():
        want, _ = greedy(alone, prompt, make_controller("autoregressive"))
        got, records = greedy(hybrid(tiny_pair), prompt, make_controller(spec))
        assert got == want
        used |= {r.drafter for r in records}
    assert {"lookup", "model"} <= used  # both proposers drafted somewhere


def test_cost_aware_hybrid_replays_step_for_step(tiny_pair):
    """The same CostAware object type, live and in replay, with a cost model that makes its choices
    matter: replayed steps (including which proposer drafted) equal the live ones."""
    target, draft = tiny_pair
    engine = hybrid(tiny_pair)
    chosen = set()
    for i, prompt in enumerate(prompts(8, seed=2)):
        stop = frozenset()
        tr = collect_trace(target, draft, prompt, 30, stop, depth=16)
        live = [e.record for e in engine.run(prompt, CostAware(cost=COST), SamplingConfig(), 30, stop)]
        assert shape(replay(tr, CostAware(cost=COST), drafter="hybrid")) == shape(live), f"prompt {i}"
        chosen |= {r.drafter for r in live}
        for spec in CONTROLLERS:
            again = [e.record for e in engine.run(prompt, make_controller(spec), SamplingConfig(), 30, stop)]
            assert shape(replay(tr, make_controller(spec), drafter="hybrid")) == shape(again), f"{spec} prompt {i}"
    assert {"lookup", "model"} <= chosen


def test_hybrid_samples_the_target_distribution():
    """Two-token draws where lookup offers the first token and the model drafts the second: exact;
    a sampler that keeps every draft fails the same test."""
    target = tiny_model(0, vocab=8, layers=1, hidden=16, temperature=4.0)
    draft = tiny_model(1, vocab=8, layers=1, hidden=16, temperature=4.0)
    check_sampler(target, parse_drafter("hybrid").source(ChainSource(draft)), [1, 2, 3, 1, 2], 12_000, 3_000)


def test_choice_follows_the_costs():
    sure = tuple(TokenSignals(0.0, 1.0, 1.0, 3) for _ in range(8))  # a long, unanimous 3-gram copy
    for drafters, cost, offer, want in [
        (("model", "lookup"), COST, sure, "lookup"),  # a sure copy costs rows only
        (("model", "lookup"), COST, (), "model"),  # nothing to copy, drafts are cheap enough
        # a target as fast as its draft (NF4 on CPU): the chain never pays, a sure copy still does
        (("model", "lookup"), CostModel((0.0, 100.0, 0.0), (100.0, 3.0, 0.0, 0.0), (0, 0), (0, 0)), (), "none"),
        (("model", "lookup"), CostModel((0.0, 100.0, 0.0), (100.0, 3.0, 0.0, 0.0), (0, 0), (0, 0)), sure, "lookup"),
        # verifying a row costs as much as a forward: a weak one-token copy is not worth it
        (("lookup",), CostModel((0, 0, 0), (100.0, 100.0, 0, 0), (0, 0), (0, 0)),
         (TokenSignals(1.0, 0.5, 0.0, 1),), "none"),
    ]:
        c = CostAware(cost=cost)
        c.start(RequestInfo(10, 100, drafters))
        c.budget()
        assert c.choose(offer) == want, (drafters, offer)


def test_a_jagged_verification_cost_sets_the_copied_span():
    """llama.cpp picks kernels by batch size: when 16 rows cost less than 13, a long sure copy is
    drafted to 15 tokens (16 rows); on the flat line the same copy stops after a few tokens."""
    sure = tuple(TokenSignals(0.0, 1.0, 1.0, 3) for _ in range(16))
    line = CostModel((0.0, 16.0, 0.0), (10.0, 15.0, 0.0, 0.0), (0, 0), (0, 0))
    measured = {n: 10 + 15 * n for n in range(1, 18)} | {16: 120.0, 17: 300.0}
    jagged = line.with_shape(measured, 300)
    assert jagged.verify_ms(16, 300) == 120.0 and jagged.verify_ms(15, 300) == 235.0 and line.verify_ms(16, 300) == 250.0
    spans = {}
    for name, cost in (("line", line), ("jagged", jagged)):
        c = CostAware(cost=cost)
        c.start(RequestInfo(10, 100, ("lookup",)))
        c.budget()
        assert c.choose(sure) == "lookup"
        spans[name] = c.lookup_span
        drafted = 0
        while c.keep_drafting(sure[drafted], drafted + 1):
            drafted += 1
        assert drafted + 1 == c.lookup_span  # keep_drafting stops exactly at the chosen span
    assert spans["jagged"] == 15 and spans["line"] < 8


def test_a_catch_up_is_priced():
    """After a lookup step got 15 tokens accepted the model must read them before drafting: where
    reading costs 50 ms a token that is not worth a chain (a plain step is), where it costs nothing
    the chain is; a read prompt amortizes over the answer (the first chain still pays)."""
    picks = {}
    for per_token in (0.0, 50.0):
        cost = replace(COST, read=(per_token,))
        c = CostAware(cost=cost)
        c.start(RequestInfo(10, 100, ("model", "lookup")))
        c.budget()
        assert c.choose(()) == "model"  # the prompt's 10 tokens: 500 ms, a share of it charged
        c.observe(StepOutcome(16, 4, 3, (TokenSignals(0.1, 0.95, 0.9),) * 4, "model"))
        c.observe(StepOutcome(16, 15, 15, (TokenSignals(0.0, 1.0, 1.0, 3),) * 15, "lookup"))
        c.budget()
        picks[per_token] = c.choose(())
    assert picks == {0.0: "model", 50.0: "none"}


def test_the_draft_reports_what_it_read(tiny_pair):
    """A chain's Draft.read: the whole prompt the first time, then what was accepted meanwhile."""
    source = ChainSource(tiny_pair[1])
    drafter = source.new(source.vocab, lambda: None)
    ids = list(range(1, 21))
    first = drafter.propose(ids, 4, make_controller("fixed:4"), SamplingConfig(), None, frozenset())
    assert first.read == 19  # (the last id is the first draft forward's own input)
    drafter.rollback(len(ids) - 1)
    ids += [5, 6, 7, 8, 9, 10]
    again = drafter.propose(ids, 4, make_controller("fixed:4"), SamplingConfig(), None, frozenset())
    assert again.read == 6
    drafter.close()


def test_the_cost_fit_separates_reading_from_drafting():
    def step(k, read, ctx=100):
        return StepRecord(0, ctx, k, k, 0, 1, draft_ms=(5 + 20 * k + 1.5 * read) * (k > 0), verify_ms=100 + 3 * k,
                          drafter="model" if k else "", draft_read=read)
    steps = [step(k, r) for k, r in [(1, 0), (2, 0), (4, 0), (3, 40), (2, 120), (5, 0), (1, 300), (0, 0), (6, 8)]]
    runs = [CalibrationRun(100, steps, 10.0, 50.0), CalibrationRun(100, steps, 10.0, 50.0)]
    cost = CostModel.fit(runs)
    assert cost.read[0] == pytest.approx(1.5, abs=1e-6)
    assert cost.draft_ms(3, 100) == pytest.approx(65, abs=1e-6)
    assert cost.drafter_ms("model", 2, 100, read=100) == pytest.approx(195, abs=1e-6)
    assert CostModel.from_dict(cost.to_dict()).read == cost.read
    assert CostModel.from_dict({k: v for k, v in cost.to_dict().items() if k != "read"}).read == (0.0,)  # older files


def test_chain_only_cost_aware_still_drafts_nothing_when_the_chain_does_not_pay():
    c = CostAware(cost=CostModel((0.0, 100.0, 0.0), (100.0, 3.0, 0.0, 0.0), (0, 0), (0, 0)))
    c.start(RequestInfo(10, 100, ("model",)))
    assert c.budget() == 0


def test_a_bad_choice_is_an_error(tiny_pair):
    class Confused(Controller):
        def budget(self):
            return 2

        def choose(self, lookup):
            return "both"

    with pytest.raises(SpeckvError, match="chose 'both'"):
        greedy(hybrid(tiny_pair), [1, 2, 3], Confused(), 5)


@pytest.mark.parametrize("read", [0.0, 4.0, 30.0])
def test_the_drafter_choosing_oracle_beats_each_drafter_alone(tiny_pair, read):
    """Under one cost model, reads priced, the oracle over both proposers is at least as fast as
    the oracle over either, and as every live policy replayed; it never drafts a rejected token,
    and its plan costs exactly what its replay does (the reads it pays included)."""
    target, draft = tiny_pair
    cost = replace(COST, read=(read,))
    for prompt in prompts(6, seed=3):
        tr = collect_trace(target, draft, prompt, 30, depth=16)
        for attended in (None, 4):  # all of the prompt, or a 4-token window of it

            def wall(controller, drafter):
                steps = replay(tr, controller, cost=cost, drafter=drafter, attended=attended)
                for s in steps:
                    s.control_ms = 0.0
                return steps, cost.wall_s(steps, len(tr.prompt_ids))

            best_oracle = oracle(tr, cost, "hybrid", attended=attended)
            steps, best = wall(best_oracle, "hybrid")
            assert all(s.accepted == s.drafted for s in steps)
            assert best * 1000 == pytest.approx(cost.prefill_ms(len(tr.prompt_ids)) + best_oracle.expected_ms)
            for drafter in ("model", "lookup"):  # (the model alone reads the prompt at prefill when it drafts at once)
                single = oracle(tr, cost, drafter, attended=attended)
                alone = wall(single, drafter)[1]
                assert best <= alone + 1e-9
                assert alone * 1000 == pytest.approx(cost.prefill_ms(len(tr.prompt_ids)) + single.expected_ms)
            for spec in CONTROLLERS:
                assert best <= wall(make_controller(spec), "hybrid")[1] + 1e-9


def test_the_oracle_plans_with_the_reads():
    """Where reading costs more than a plain step saves, an oracle that plans as if reads were free
    (a broken variant: the oracle before reads were priced) drafts from the model after a long copy
    and replays slower than the one that prices them, which pays only what it must."""
    from speckv.measure.trace import Trace

    prompt = list(range(20))
    out = list(range(100, 112)) + prompt + list(range(200, 212))  # new text, a copy of the prompt, new text
    tr = Trace(prompt, out, list(out), [TokenSignals(0.1, 0.9, 0.8)] * len(out), {}, len(out), 0)
    cost = replace(COST, read=(60.0,))

    def wall(planned_with):
        steps = replay(tr, oracle(tr, planned_with, "hybrid"), cost, "hybrid")
        return cost.wall_s(steps, len(prompt)), {s.drafter for s in steps}

    aware, blind = wall(cost), wall(replace(cost, read=(0.0,)))
    assert "model" in blind[1] and aware[0] < blind[0]
