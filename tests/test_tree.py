"""Token trees on tiny random models: the tree-masked cache equals a recomputed one, greedy tree
decoding is the target's greedy output (including steps where a non-first branch wins), and tree
sampling is the target's distribution (a broken variant fails the same test)."""

import pytest
import torch

from speckv.backends import as_runner
from speckv.control import make_controller
from speckv.drafting.chain import ChainSource
from speckv.engine import Engine, SamplingConfig
from speckv.engine.sampling import TreeVerdict, accept_tree_greedy, accept_tree_speculative

from conftest import tiny_model
from test_engine import reference, run
from test_sampling import chi2_p


def test_tree_forward_then_compact_equals_a_recomputed_cache():
    model = tiny_model(3, vocab=64)
    runner = as_runner(model)
    prompt = [5, 9, 2, 7, 1, 3]
    seq = runner.sequence()
    seq.forward(prompt, 1, 64)
    base = len(seq)
    # root = prompt[-1] (entry base - 1); nodes: a(0) b(1) under root, c(2) under a, d(3) under b, e(4) under c
    tokens, parents = [11, 12, 13, 14, 15], [base - 1, base - 1, base, base + 1, base + 2]
    tree_logits = seq.forward(tokens, 5, 64, parents)
    for path in ([0, 2, 4], [1, 3]):  # each node's logits equal a plain forward along its path
        ref = runner.sequence()
        logits = ref.forward(prompt + [tokens[n] for n in path], len(path), 64)
        assert torch.allclose(tree_logits[path], logits, atol=1e-5)
    seq.compact(base, [base + 1, base + 3])  # keep b, d
    after = seq.forward([20], 1, 64)
    ref = runner.sequence()
    assert torch.allclose(after, ref.forward(prompt + [12, 14, 20], 1, 64), atol=1e-5)
    assert len(seq) == base + 3
    seq.truncate(base)  # and the cache stays an ordinary chain afterwards
    assert torch.allclose(seq.forward([8], 1, 64), runner.sequence().forward(prompt + [8], 1, 64), atol=1e-5)


def test_parents_must_point_backwards():
    seq = as_runner(tiny_model(3)).sequence()
    seq.forward([1, 2, 3], 1, 64)
    with pytest.raises(ValueError):
        seq.forward([4], 1, 64, [3])  # its own index
    seq.forward([4], 1, 64, [2])
    with pytest.raises(ValueError):
        seq.forward([5], 1, 64)  # a committed token after a tree entry, before compacting


@pytest.mark.parametrize("spec", ["tree:depth=3,nodes=6,width=2", "tree:depth=5,nodes=16,width=4",
                                  "tree:depth=4,nodes=10,width=3,rerank", "tree:depth=1,nodes=4,width=4"])
def test_greedy_tree_output_equals_target_greedy(tiny_pair, spec):
    target, draft = tiny_pair
    engine = Engine(target, ChainSource(draft))
    gen = torch.Generator().manual_seed(len(spec))
    accepted = 0
    for _ in range(10):
        prompt = torch.randint(0, 64, (int(torch.randint(1, 20, (1,), generator=gen)),), generator=gen).tolist()
        tokens, records = run(engine, prompt, spec)
        assert tokens == reference(target, prompt, 40)
        accepted += sum(r.accepted for r in records)
        depth = int(spec.split("depth=")[1].split(",")[0])
        assert all(r.tree_depth <= depth and r.accepted <= r.tree_depth for r in records)
        assert any(r.tree_depth > 0 for r in records)
    assert accepted > 0


def test_a_non_first_branch_wins_and_is_kept(tiny_pair):
    """Some steps accept a path through a child that is not the draft's top choice: the drafted
    tree held it, verification found it and both caches kept it."""
    target, draft = tiny_pair
    engine = Engine(target, ChainSource(draft))
    seen, wins = [], []

    def spy(logits, tokens, parents, **kw):
        v = accept_tree_greedy(logits, tokens, parents)
        seen.append((v.path, parents))
        return v

    engine.tree_acceptance = spy
    gen = torch.Generator().manual_seed(7)
    for _ in range(8):
        prompt = torch.randint(0, 64, (12,), generator=gen).tolist()
        tokens, _ = run(engine, prompt, "tree:depth=4,nodes=12,width=3")
        assert tokens == reference(target, prompt, 40)
    for path, parents in seen:
        for node in path:  # a node is a non-first branch when an earlier sibling exists
            if any(p == parents[node] for p in parents[:node]):
                wins.append(node)
    assert wins, "no step accepted a non-first branch: the test would not see a wrong compaction"


def accept_tree_without_residual(target_logits, tokens, parents, config, generator, **_):
    """Broken: after rejecting candidates, samples from p itself instead of the residual."""
    v = accept_tree_speculative(target_logits, tokens, parents, config, generator)
    p = config.probs(target_logits)
    node = v.path[-1] if v.path else -1
    kids = [i for i, q in enumerate(parents) if q == node]
    if kids:  # every candidate here was rejected: redraw from p, which can return a rejected one
        return TreeVerdict(v.path, int(torch.multinomial(p[node + 1], 1, generator=generator)))
    return v


def triple_distribution(model, prompt, config, vocab=8):
    with torch.no_grad():
        p1 = config.probs(model(torch.tensor([prompt])).logits[0, -1:].float())[0]
        seq2 = torch.tensor([prompt + [a] for a in range(vocab)])
        p2 = config.probs(model(seq2).logits[:, -1].float())
        seq3 = torch.tensor([prompt + [a, b] for a in range(vocab) for b in range(vocab)])
        p3 = config.probs(model(seq3).logits[:, -1].float())
    return (p1[:, None, None] * p2[:, :, None] * p3.view(vocab, vocab, vocab)).flatten()


def sample_triples(engine, prompt, config, draws, spec):
    counts = torch.zeros(512)
    for seed in range(draws):
        cfg = SamplingConfig(True, config.temperature, config.top_k, config.top_p, seed)
        tokens = [t for e in engine.run(prompt, make_controller(spec), cfg, 3) for t in e.tokens]
        counts[(tokens[0] * 8 + tokens[1]) * 8 + tokens[2]] += 1
    return counts


def test_tree_sampling_is_the_target_distribution():
    target = tiny_model(0, vocab=8, layers=1, hidden=16, temperature=3.0)
    draft = tiny_model(1, vocab=8, layers=1, hidden=16, temperature=3.0)
    config = SamplingConfig(True, temperature=0.9)
    prompt = [1, 4, 2]
    exact = triple_distribution(target, prompt, config)
    spec = "tree:depth=2,nodes=6,width=3"
    good = chi2_p(sample_triples(Engine(target, ChainSource(draft)), prompt, config, 6000, spec), exact)
    broken_engine = Engine(target, ChainSource(draft), tree_acceptance=accept_tree_without_residual)
    broken = chi2_p(sample_triples(broken_engine, prompt, config, 3000, spec), exact)
    assert good > 0.01, good
    assert broken < 0.01, broken


def test_a_wrong_compaction_is_caught(tiny_pair, monkeypatch):
    """Broken variant: keeping the first nodes in level order instead of the accepted path must
    change the output, or the tests above could not see a compaction bug."""
    from speckv.backends.hf import TorchSequence

    target, draft = tiny_pair
    real = TorchSequence.compact
    monkeypatch.setattr(TorchSequence, "compact", lambda self, length, path: real(self, length, list(range(length, length + len(path)))))
    engine = Engine(target, ChainSource(draft))
    gen = torch.Generator().manual_seed(7)
    differs = 0
    for _ in range(8):
        prompt = torch.randint(0, 64, (12,), generator=gen).tolist()
        differs += run(engine, prompt, "tree:depth=4,nodes=12,width=3")[0] != reference(target, prompt, 40)
    assert differs


@pytest.mark.parametrize("spec", ["tree:depth=4,nodes=12,width=3,spine", "tree:depth=6,nodes=11,width=2,spine"])
def test_spine_tree_replay_equals_live(tiny_pair, spec):
    """A fixed spine-shaped tree replays exactly from a trace (the draft's best tokens are recorded
    at every on-path position): node counts, depths, accepted paths, the tokens and what the draft
    read first all agree."""
    from speckv.measure.replay import replay
    from speckv.measure.trace import collect_trace

    target, draft = tiny_pair
    engine = Engine(target, ChainSource(draft))
    gen = torch.Generator().manual_seed(11)
    for i in range(8):
        prompt = torch.randint(0, 64, (int(torch.randint(2, 16, (1,), generator=gen)),), generator=gen).tolist()
        tr = collect_trace(target, draft, prompt, 30, depth=12)
        live = [e.record for e in engine.run(prompt, make_controller(spec), SamplingConfig(), 30)]
        replayed = replay(tr, make_controller(spec))
        shape = lambda steps: [(s.context_len, s.budget, s.drafted, s.tree_depth, s.accepted, s.emitted, s.draft_read)  # noqa: E731
                               for s in steps]
        assert shape(replayed) == shape(live), (spec, i)
        assert any(s.tree_depth for s in live)


def test_beam_trees_are_refused_by_replay(tiny_pair):
    from speckv.errors import SpeckvError
    from speckv.measure.replay import replay
    from speckv.measure.trace import collect_trace

    target, draft = tiny_pair
    tr = collect_trace(target, draft, [1, 2, 3], 20, depth=8)
    with pytest.raises(SpeckvError, match="beam trees"):
        replay(tr, make_controller("tree:depth=4,nodes=12,width=3"))


@pytest.mark.parametrize("args,msg", [
    (["--controller", "tree:depth=5,nodes=3"], "nodes=3 < depth=5"),
    (["--controller", "tree:width=0"], "width=0 is out of range"),
    (["--controller", "tree:depth=4,rerank,spine"], "exclude each other"),
    (["--controller", "tree:deep=4"], "'deep=4' is not one of"),
    (["--controller", "tree", "--drafter", "lookup"], "drafts token trees from a draft model"),
    (["--controller", "heterospec", "--drafter", "lookup"], "drafts token trees from a draft model"),
])
def test_bad_tree_requests_fail_before_any_model_loads(cli, args, msg):
    code, _, err = cli("generate", "hi", "--target", "no-such-model", *args)  # loading would fail otherwise
    assert code == 2 and msg in err and err.startswith("speckv: error:") and err.count("\n") == 1, err


def test_tree_oracle_is_never_slower_than_the_chain_oracle(tiny_pair):
    """The tree oracle ends a run with the runners-up where the target's token is among them: it
    never predicts a slower replay than the chain oracle, and does gain somewhere on the tiny pair."""
    from speckv.cost import CostModel
    from speckv.measure.replay import oracle, replay
    from speckv.measure.trace import collect_trace

    target, draft = tiny_pair
    cost = CostModel.ratio()
    gen = torch.Generator().manual_seed(5)
    gained = 0
    for _ in range(6):
        prompt = torch.randint(0, 64, (8,), generator=gen).tolist()
        tr = collect_trace(target, draft, prompt, 30, depth=12)
        chain = replay(tr, oracle(tr, cost), cost)
        tree = replay(tr, oracle(tr, cost, tree_width=4), cost)
        ms = lambda steps: sum(s.draft_ms + s.verify_ms for s in steps)  # noqa: E731
        assert ms(tree) <= ms(chain) + 1e-6
        assert sum(s.emitted for s in tree) == len(tr.output_ids)
        gained += any(s.tree_depth for s in tree)
    assert gained


def test_long_prompts_prefill_in_chunks_to_the_same_cache(monkeypatch):
    """A prompt longer than the prefill chunk goes through in pieces: the next token's logits equal
    one whole forward's (float32)."""
    from speckv.backends import hf

    model = tiny_model(4)
    runner = as_runner(model)
    prompt = torch.randint(0, 64, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    whole = runner.sequence()
    want = whole.forward(prompt, 3, 64)
    monkeypatch.setattr(hf, "PREFILL_CHUNK", 48)
    calls = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(k["input_ids"].shape[1]) or real(*a, **k))
    chunked = runner.sequence()
    got = chunked.forward(prompt, 3, 64)
    assert max(calls) <= 48 and sum(calls) == 200 and len(chunked) == 200
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(chunked.forward([5], 1, 64), whole.forward([5], 1, 64), atol=1e-4)
