"""Trace replay is exact: replayed steps equal live steps, for fixed and signal-driven controllers."""

import pytest
import torch

from speckv.control import make_controller
from speckv.control.oracle import Oracle
from speckv.drafting.chain import ChainSource
from speckv.engine import Engine, SamplingConfig
from speckv.errors import SpeckvError
from speckv.cost import CalibrationRun, CostModel
from speckv.records import StepRecord
from speckv.measure.replay import replay
from speckv.measure.trace import collect_trace, load_trace, save_trace

CONTROLLERS = ["fixed:1", "fixed:3", "fixed:6", "p-min:8:0.5", "hf-confidence:8", "hf-heuristic:2", "auto"]


def shape(steps):
    """A step as replay must reproduce it, down to the tokens the draft read before drafting."""
    return [(s.context_len, s.budget, s.drafted, s.accepted, s.emitted, s.draft_read) for s in steps]


@pytest.fixture(scope="module")
def traces(tiny_pair):
    target, draft = tiny_pair
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(8):
        prompt = torch.randint(0, 64, (int(torch.randint(2, 16, (1,), generator=gen)),), generator=gen).tolist()
        tr = collect_trace(target, draft, prompt, 30, depth=12)
        if i % 2:  # end this one early at a stop token taken from its own output
            stop = frozenset({tr.output_ids[10]})
            tr = collect_trace(target, draft, prompt, 30, stop, depth=12)
        out.append(tr)
    return out


def stop_of(tr):
    return tr.stop_ids


def test_trace_output_is_the_targets_greedy_output(tiny_pair, traces):
    target, _ = tiny_pair
    for tr in traces[::2]:  # no stop ids: exactly max_new_tokens
        ref = target.generate(torch.tensor([tr.prompt_ids]), do_sample=False, max_new_tokens=30, min_new_tokens=30)
        assert tr.output_ids == ref[0, len(tr.prompt_ids):].tolist()
    assert all(tr.output_ids[-1] in stop_of(tr) and len(tr.output_ids) <= 11 for tr in traces[1::2])
    assert any(not all(tr.matches) for tr in traces) and any(any(tr.matches) for tr in traces)


@pytest.mark.parametrize("spec", CONTROLLERS)
def test_replay_equals_live(tiny_pair, traces, spec):
    engine = Engine(tiny_pair[0], ChainSource(tiny_pair[1]))
    for i, tr in enumerate(traces):
        stop = stop_of(tr)
        live = [e for e in engine.run(tr.prompt_ids, make_controller(spec), SamplingConfig(), 30, stop)]
        assert [t for e in live for t in e.tokens] == tr.output_ids
        replayed = replay(tr, make_controller(spec))
        assert shape(replayed) == shape([e.record for e in live]), f"{spec} prompt {i}"


def test_one_draft_loop_drives_live_and_replay(tiny_pair, traces, monkeypatch):
    """Change the draft loop in its one place (stop after two proposals): live drafting and replay
    both follow, and still agree step for step."""
    from speckv.drafting import base

    engine = Engine(tiny_pair[0], ChainSource(tiny_pair[1]))

    def steps(tr):
        live = [e.record for e in engine.run(tr.prompt_ids, make_controller("fixed:6"), SamplingConfig(), 30, stop_of(tr))]
        return live, replay(tr, make_controller("fixed:6"))

    assert max(s.drafted for tr in traces for s in steps(tr)[0]) > 2
    original = base.draft_loop
    monkeypatch.setattr(base, "draft_loop", lambda propose, budget, *a, **k: original(propose, min(budget, 2), *a, **k))
    for tr in traces:
        live, replayed = steps(tr)
        assert max(s.drafted for s in live) == 2 and shape(replayed) == shape(live)


def test_signals_replayed_match_live(tiny_pair, traces):
    live = list(Engine(tiny_pair[0], ChainSource(tiny_pair[1])).run(traces[0].prompt_ids, make_controller("fixed:6"), SamplingConfig(), 30))
    replayed = replay(traces[0], make_controller("fixed:6"))
    for a, b in zip(replayed, live):
        for x, y in zip(a.signals, b.record.signals):
            assert (x.entropy, x.top1, x.margin) == pytest.approx((y.entropy, y.top1, y.margin), abs=1e-4)


def test_trace_roundtrip(tmp_path, traces):
    for i, tr in enumerate(traces[:3]):
        save_trace(tr, tmp_path / f"{i}.parquet")
        back = load_trace(tmp_path / f"{i}.parquet")
        assert shape(replay(back, make_controller("p-min:8:0.5"))) == shape(replay(tr, make_controller("p-min:8:0.5")))
        assert back.output_ids == tr.output_ids and back.branches.keys() == tr.branches.keys()
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(SpeckvError, match="not a readable speckv trace"):
        load_trace(tmp_path / "bad.parquet")


def test_replay_refuses_budgets_deeper_than_the_trace(traces):
    tr = next(t for t in traces if t.branches and min(t.branches) < len(t.output_ids) - 20)
    with pytest.raises(SpeckvError, match="continuation depth"):
        replay(tr, make_controller("fixed:20"))


def test_oracle_is_optimal_under_the_cost_model(traces):
    cost = CostModel((5.0, 20.0, 0.0), (100.0, 3.0, 10.0, 0.0), (1.0, 0.0), (50.0, 0.0))

    def wall(tr, controller):  # model time only: measured decision time would add noise
        steps = replay(tr, controller, cost=cost)
        for s in steps:
            s.control_ms = 0.0
        return steps, cost.wall_s(steps, len(tr.prompt_ids))

    for tr in traces:
        steps, best = wall(tr, Oracle(tr, cost))
        assert all(s.accepted == s.drafted for s in steps)
        for spec in ("fixed:1", "fixed:2", "fixed:4", "p-min:8:0.5", "autoregressive"):
            assert best <= wall(tr, make_controller(spec))[1] + 1e-12


def test_cost_model_recovers_known_costs():
    gen = torch.Generator().manual_seed(0)
    runs = []
    for r in range(6):
        steps, ctx, produced, wall = [], 100 + 50 * r, 0, 0.0
        for i in range(30):
            k = int(torch.randint(0, 9, (1,), generator=gen))
            s = StepRecord(i, ctx, k, k, k // 2, k // 2 + 1, draft_ms=(4.0 * (k > 0) + k * (40 + 20 * ctx / 1000)),
                           verify_ms=200 + 5 * (k + 1) + 30 * ctx / 1000, control_ms=0.01)
            wall += s.draft_ms + s.verify_ms + s.control_ms + 2.0 + 3.0 * produced / 1000
            produced += s.emitted
            ctx += s.emitted
            steps.append(s)
        prefill = 80 + 100 * (100 + 50 * r) / 1000
        runs.append(CalibrationRun(100 + 50 * r, steps, (wall + prefill) / 1000, prefill))
    cost = CostModel.fit(runs)
    assert cost.draft == pytest.approx((4.0, 40.0, 20.0), rel=1e-3, abs=1e-3)
    assert cost.verify == pytest.approx((200.0, 5.0, 30.0, 0.0), rel=1e-3, abs=1e-3)
    assert cost.overhead == pytest.approx((2.0, 3.0), rel=1e-3, abs=1e-3)
    for r in runs:
        assert cost.wall_s(r.steps, r.prompt_len) == pytest.approx(r.wall_s, rel=1e-6)


def test_trained_controllers_are_lossless_and_replay_exactly(tiny_pair, traces, tmp_path):
    """Every controller kind, trained on some traces, run live on others: output is the target's
    greedy output, and replay reproduces the live steps."""
    from speckv.control import Setup, cost_aware_from, speckv_from
    from speckv.control.artifact import load_artifact
    from speckv.control.train import train_cost_aware, train_speckv

    for tr in traces:
        tr.meta.update(compression="fp32", prompt_id=str(id(tr)))
    setup = Setup("tiny-target", "tiny-draft", "fp32")
    cost = CostModel((1.0, 20.0, 0.0), (100.0, 2.0, 0.0, 0.0), (0.5, 0.0), (10.0, 0.0))
    train, test = traces[:5], traces[5:]
    arts = [train_cost_aware(train, setup, cost), *train_speckv(train, [setup])]
    for art in arts:  # through the file format, as the CLI would load them
        art.save(tmp_path / f"{art.kind}.json")
    controllers = [lambda: cost_aware_from(load_artifact(tmp_path / "cost-aware.json", "cost-aware", arts[0].features, setup)),
                   lambda: speckv_from(load_artifact(tmp_path / "speckv.json", "speckv", arts[1].features, setup))]
    engine = Engine(tiny_pair[0], ChainSource(tiny_pair[1]))
    for tr in test:
        for make in controllers:
            live = list(engine.run(tr.prompt_ids, make(), SamplingConfig(), 30, tr.stop_ids))
            assert [t for e in live for t in e.tokens] == tr.output_ids
            assert shape(replay(tr, make())) == shape([e.record for e in live])
