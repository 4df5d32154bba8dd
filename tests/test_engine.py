"""Engine correctness on tiny random models: greedy losslessness, limits, records, rollback."""

from contextlib import contextmanager

import pytest
import torch

from speckv.control import Controller, make_controller
from speckv.drafting.chain import ChainSource
from speckv.engine import Engine, SamplingConfig
from speckv.errors import SpeckvError
from speckv.records import Stats


def run(engine, prompt, controller, max_new_tokens=40, stop_ids=frozenset(), config=SamplingConfig()):
    tokens, records = [], []
    for event in engine.run(prompt, make_controller(controller), config, max_new_tokens, stop_ids):
        tokens += event.tokens
        records.append(event.record)
    return tokens, records


def reference(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("gamma", [1, 2, 3, 4, 8])
def test_greedy_output_equals_target_greedy(tiny_pair, gamma):
    target, draft = tiny_pair
    engine = Engine(target, ChainSource(draft))
    gen = torch.Generator().manual_seed(gamma)
    total_accepted = 0
    for _ in range(12):
        prompt = torch.randint(0, 64, (int(torch.randint(1, 20, (1,), generator=gen)),), generator=gen).tolist()
        tokens, records = run(engine, prompt, f"fixed:{gamma}")
        assert tokens == reference(target, prompt, 40)
        total_accepted += sum(r.accepted for r in records)
    assert total_accepted > 0  # the pair is related: speculation really happened


def test_autoregressive_controller_skips_the_draft(tiny_pair):
    target, _ = tiny_pair
    tokens, records = run(Engine(target), [3, 1, 4], "autoregressive", 25)
    assert tokens == reference(target, [3, 1, 4], 25)
    assert all(r.drafted == 0 and r.emitted == 1 for r in records)


def test_records_are_consistent(tiny_pair):
    tokens, records = run(Engine(tiny_pair[0], ChainSource(tiny_pair[1])), [5, 6, 7], "fixed:4", 50)
    assert len(tokens) == 50 == sum(r.emitted for r in records)
    for r in records:
        assert r.accepted <= r.drafted <= r.budget <= 4
        assert len(r.signals) == r.drafted
        assert all(s.entropy >= 0 and 0 < s.top1 <= 1 and 0 <= s.margin <= s.top1 for s in r.signals)
        assert r.verify_ms > 0 and (r.drafted == 0 or r.draft_ms > 0)
    assert [r.step for r in records] == list(range(len(records)))
    # context grows by exactly what was emitted
    for a, b in zip(records, records[1:]):
        assert b.context_len == a.context_len + a.emitted


@pytest.mark.parametrize("limit", [1, 2, 5, 7])
def test_max_new_tokens_is_exact(tiny_pair, limit):
    tokens, records = run(Engine(tiny_pair[0], ChainSource(tiny_pair[1])), [1, 2], "fixed:8", limit)
    assert len(tokens) == limit
    assert all(r.budget <= limit - 1 for r in records)


def test_stops_at_eos_and_keeps_it(tiny_pair):
    target, draft = tiny_pair
    full = reference(target, [9, 9], 30)
    eos = full[10]
    first = full.index(eos)
    tokens, _ = run(Engine(target, ChainSource(draft)), [9, 9], "fixed:4", 30, frozenset({eos}))
    assert tokens == full[: first + 1]


class RecordingEngine(Engine):
    """Keeps each run's drafter (runs own theirs) so a test can look at its cache."""

    def new_drafter(self):
        self.drafters = [*getattr(self, "drafters", []), super().new_drafter()]
        return self.drafters[-1]


def test_caches_hold_only_the_accepted_prefix(tiny_pair):
    engine = RecordingEngine(tiny_pair[0], ChainSource(tiny_pair[1]))
    events = engine.run([1, 2, 3], make_controller("fixed:6"), SamplingConfig(), 30)
    ids = [1, 2, 3]
    for event in events:
        ids += event.tokens
        if not event.finished:
            assert len(engine.drafters[-1].cache) <= len(ids) - 1
    assert len(engine.drafters) == 1


def test_each_run_gets_its_own_draft_cache(tiny_pair):
    engine = RecordingEngine(tiny_pair[0], ChainSource(tiny_pair[1]))
    first = engine.run([1, 2, 3], make_controller("fixed:4"), SamplingConfig(), 20)
    next(first)
    list(engine.run([7, 8], make_controller("fixed:4"), SamplingConfig(), 20))
    held = len(engine.drafters[0].cache)
    assert len(engine.drafters) == 2 and engine.drafters[0] is not engine.drafters[1]
    assert 2 <= held  # the second run neither reset nor cropped the first run's cache
    assert [t for e in first for t in e.tokens]  # and the first run goes on


def test_bad_requests_are_user_errors(tiny_pair):
    engine = Engine(tiny_pair[0], ChainSource(tiny_pair[1]))
    with pytest.raises(SpeckvError, match="empty prompt"):
        list(engine.run([], make_controller("fixed:2")))
    with pytest.raises(SpeckvError, match="max_new_tokens"):
        list(engine.run([1], make_controller("fixed:2"), max_new_tokens=0))
    with pytest.raises(SpeckvError, match="context"):
        list(engine.run(list(range(10)), make_controller("fixed:2"), max_context=10))
    with pytest.raises(SpeckvError, match="needs a draft"):
        list(Engine(tiny_pair[0]).run([1], make_controller("fixed:2")))


@pytest.mark.parametrize("spec,msg", [("fixed:0", "out of range"), ("fixed:99", "out of range"), ("fixed:x", "not an integer"),
                                      ("fixed", "needs a gamma"), ("bogus", "unknown controller")])
def test_controller_spec_errors(spec, msg):
    with pytest.raises(SpeckvError, match=msg):
        make_controller(spec)


def test_prefill_time_comes_with_the_first_event_only(tiny_pair):
    events = list(Engine(tiny_pair[0], ChainSource(tiny_pair[1])).run([1, 2, 3, 4, 5], make_controller("fixed:2"), SamplingConfig(), 10))
    assert events[0].prefill_ms > 0 and all(e.prefill_ms == 0 for e in events[1:])
    # the draft's reading of the prompt is its own part of that (decode speed keeps it in)
    assert 0 < events[0].draft_prefill_ms < events[0].prefill_ms and all(e.draft_prefill_ms == 0 for e in events[1:])
    alone = list(Engine(tiny_pair[0]).run([1, 2, 3, 4, 5], make_controller("autoregressive"), SamplingConfig(), 10))
    assert alone[0].prefill_ms > 0 and alone[0].draft_prefill_ms == 0


def test_decode_seconds_leave_out_only_the_targets_prompt_reading():
    stats = Stats.from_steps([], 10, wall_s=2.0, prefill_ms=800.0, draft_prefill_ms=300.0)
    assert stats.decode_s == pytest.approx(1.5)  # 2.0 s - (800 - 300) ms


class LateStarter(Controller):
    """Plain target steps first, then fixed-length drafts: the draft must catch up on the context."""

    def __init__(self, plain_steps: int, gamma: int):
        self.plain_steps, self.gamma = plain_steps, gamma

    def start(self, request):
        self.steps = 0

    def budget(self):
        self.steps += 1
        return self.gamma if self.steps > self.plain_steps else 0


@contextmanager
def draft_forwards(draft):
    """Counts the draft model's forward passes inside the block."""
    calls = []
    hook = draft.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()


@pytest.mark.parametrize("plain_steps", [0, 1, 5])
def test_the_draft_reads_the_prompt_only_when_it_drafts(tiny_pair, plain_steps):
    target, draft = tiny_pair
    with draft_forwards(draft) as calls:
        events = list(Engine(target, ChainSource(draft)).run([3, 1, 4, 1, 5], LateStarter(plain_steps, 3), SamplingConfig(), 30))
    assert [t for e in events for t in e.tokens] == reference(target, [3, 1, 4, 1, 5], 30)
    assert all(e.record.drafted == 0 for e in events[:plain_steps]) and events[plain_steps].record.drafted > 0
    assert len(calls) == sum(e.record.drafted for e in events) + (plain_steps == 0)  # + the prompt's prefill


def test_a_controller_that_never_drafts_never_runs_the_draft(tiny_pair):
    target, draft = tiny_pair
    with draft_forwards(draft) as calls:
        events = list(Engine(target, ChainSource(draft)).run([3, 1, 4, 1, 5], LateStarter(100, 3), SamplingConfig(), 20))
    assert [t for e in events for t in e.tokens] == reference(target, [3, 1, 4, 1, 5], 20)
    assert calls == []
