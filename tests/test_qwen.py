"""Integration on the real Qwen2.5-Coder pair (pulled into the cache on first use).

float32 target: speckv's greedy output must equal transformers' greedy output token for token.
The draft runs in bfloat16: it only proposes, so exactness depends on the target alone.
"""

import pytest
import torch

import speckv
from speckv.data.prompts import spec_bench
from speckv.errors import SpeckvError
from speckv.models import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

pytestmark = pytest.mark.qwen


@pytest.fixture(scope="module")
def qwen_fp32():
    return speckv.Decoder(load_model(DEFAULT_TARGET, "float32"), load_model(DEFAULT_DRAFT, "bfloat16"))


def test_greedy_equals_transformers_generate(qwen_fp32):
    dec = qwen_fp32
    prompts = spec_bench(["coding", "math_reasoning", "writing"], 1)
    for p in prompts:
        ids = dec.encode(p.text)
        x = torch.tensor([ids])
        with torch.inference_mode():
            ref = dec.target.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=24)
        ref = ref[0, len(ids):].tolist()
        for controller in ("fixed:4", "fixed:8"):
            result = dec.generate(ids, controller=controller, max_new_tokens=24)
            assert result.token_ids == ref, (p.id, controller)
            assert result.stats.mean_accepted > 0.5  # the pair really speculates


def test_lookup_drafter_is_lossless(qwen_fp32):
    """Prompt lookup on the float32 Qwen target (the Decoder's own target, no draft model): greedy
    output equals the target alone, on a prompt whose answer copies its input."""
    lookup = speckv.Decoder(qwen_fp32.target, None, "fixed:4", drafter="lookup")
    code = "def area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
    ids = lookup.encode(f"Add type hints to these functions and return the whole code:\n```python\n{code}```")
    want = lookup.generate(ids, controller="autoregressive", max_new_tokens=40)
    got = lookup.generate(ids, max_new_tokens=40)
    assert got.token_ids == want.token_ids and got.stats.mean_accepted > 0.5


def test_every_drafter_is_lossless(qwen_fp32):
    """float32 target: the hybrid (auto's drafter) with the bf16 draft, and the NF4 draft with a
    32k-token head (FR-Spec), each give the target's own greedy tokens."""
    from speckv.data.token_freq import token_ranking
    from speckv.models.reduced_head import reduce_head

    nf4 = load_model(DEFAULT_DRAFT, "nf4")
    small = reduce_head(nf4, 32768, token_ranking(nf4.tokenizer))
    code = "def area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
    ids = qwen_fp32.encode(f"Rename w to width and h to height in this code:\n```python\n{code}```")
    want = qwen_fp32.generate(ids, controller="autoregressive", max_new_tokens=32).token_ids
    for draft, drafter in ((qwen_fp32.draft, "hybrid"), (nf4, "model"), (small, "hybrid")):
        dec = speckv.Decoder(qwen_fp32.target, draft, "auto", drafter=drafter)
        got = dec.generate(ids, max_new_tokens=32)
        assert got.token_ids == want, (draft.compression, drafter)
        assert got.stats.mean_accepted > 0.5


def test_stream_matches_generate_text(qwen_fp32):
    pieces = list(qwen_fp32.stream("Write a Python function that reverses a string.", max_new_tokens=20))
    result = qwen_fp32.generate("Write a Python function that reverses a string.", max_new_tokens=20)
    assert len(pieces) > 1 and "".join(pieces) == result.text


def test_stop_string_truncates(qwen_fp32):
    result = qwen_fp32.generate("Count from 1 to 20, separated by commas.", max_new_tokens=40, stop=["5"])
    assert result.finish_reason == "stop" and "5" not in result.text and result.text


def test_different_tokenizers_are_refused():
    with pytest.raises(SpeckvError, match="different tokenizers"):
        speckv.load(target="qwen2.5-coder-0.5b-instruct", draft="smollm2-135m-instruct", dtype="float32")


def test_replay_equals_live_in_float32():
    """Both models in float32: the trace's batched draft pass equals live drafting exactly, so
    replayed steps equal live steps for fixed gamma and for signal-driven controllers, with the
    default drafter (the hybrid: each step lookup, the model or nothing)."""
    from speckv.control import make_controller
    from speckv.measure.replay import replay
    from speckv.measure.trace import collect_trace

    dec = speckv.Decoder(load_model(DEFAULT_TARGET, "float32"), load_model(DEFAULT_DRAFT, "float32"))
    for p in spec_bench(["coding", "writing"], 1):
        ids = dec.encode(p.text)
        trace = collect_trace(dec.target.model, dec.draft.model, ids, 32, dec.stop_ids, depth=15)
        assert trace.branches  # the draft really disagrees somewhere
        assert str(dec.drafter) == "hybrid:3:1"
        for spec in ("fixed:4", "p-min:8:0.6", "auto", "tree:depth=5,nodes=12,width=3,spine"):
            live = dec.generate(ids, controller=spec, max_new_tokens=32)
            assert live.token_ids == trace.output_ids
            replayed = replay(trace, make_controller(spec, dec.setup), drafter=str(dec.drafter))
            assert [(s.budget, s.drafted, s.accepted, s.drafter, s.tree_depth) for s in replayed] == \
                [(s.budget, s.drafted, s.accepted, s.drafter, s.tree_depth) for s in live.steps], (p.id, spec)


def test_tree_decoding_is_lossless(qwen_fp32):
    """float32 target, tree controllers (beam and re-ranked): the target's greedy tokens, with trees
    really drafted and at least one accepted path through a sibling that was not the draft's first."""
    from speckv.engine.sampling import accept_tree_greedy

    dec = speckv.Decoder(qwen_fp32.target, qwen_fp32.draft, "auto", drafter="model")
    side = []

    def spy(logits, tokens, parents, **kw):
        v = accept_tree_greedy(logits, tokens, parents)
        side.extend(n for n in v.path if parents.index(parents[n]) != n)
        return v

    dec.engine.tree_acceptance = spy
    for p in spec_bench(["coding", "writing"], 1):
        ids = dec.encode(p.text)
        want = dec.generate(ids, controller="autoregressive", max_new_tokens=40).token_ids
        for spec in ("tree:depth=5,nodes=16,width=4", "tree:depth=6,nodes=20,width=4,rerank"):
            got = dec.generate(ids, controller=spec, max_new_tokens=40)
            assert got.token_ids == want, (p.id, spec)
            assert any(s.tree_depth > 1 for s in got.steps) and got.stats.mean_accepted > 0.5
    assert side, "no accepted path went through a non-first sibling"
