"""Long inputs (drafting/context.py, backends/hf.py gather/last_attention): moved keys equal keys
computed at the new position, the target's last-layer attention equals eager attention, and greedy
decoding with a sliding-window or retrieval draft is the target's greedy output (fp32)."""

import pytest
import torch
from transformers import DynamicCache

from speckv.backends import as_runner
from speckv.backends.hf import TorchSequence
from speckv.control import make_controller
from speckv.drafting.chain import ChainSource
from speckv.drafting.context import LongContext, WorkingCache, auto_threshold
from speckv.engine import Engine
from speckv.errors import SpeckvError

from conftest import tiny_model
from test_engine import reference, run


@pytest.fixture(scope="module")
def long_pair():
    """(target, draft) as conftest's tiny_pair, with room for 1K-token prompts."""
    target = tiny_model(0, temperature=8.0, context=1024)
    draft = tiny_model(0, temperature=8.0, context=1024)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.3 * torch.randn_like(p) * p.std())
    return target, draft


def _cache_at(model, tokens, start):
    """A sequence holding `tokens` computed from scratch at positions start, start+1, ..."""
    seq = TorchSequence(model)
    with torch.inference_mode():
        model(input_ids=torch.tensor([tokens]), cache=seq.cache, use_cache=True,
              position_ids=torch.arange(start, start + len(tokens))[None])
    return seq


def _max_diff(a: TorchSequence, b: TorchSequence) -> float:
    """Largest difference of cached keys or values, over all layers."""
    return max(max((x.keys - y.keys).abs().max().item(), (x.values - y.values).abs().max().item())
               for x, y in zip(a.cache.layers, b.cache.layers))


def test_moved_keys_equal_keys_recomputed_at_the_new_positions():
    """A block read from scratch at positions 0.. and moved to positions 500.. (behind 500 other
    entries) equals the block read from scratch at 500.. in every layer: RoPE attention depends on
    distances only, so only the rotation moves. The block's own keys do differ between the two."""
    model = tiny_model(4, context=1024)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (40,), generator=gen).tolist()
    fresh, shifted = _cache_at(model, tokens, 0), _cache_at(model, tokens, 500)
    assert _max_diff(shifted, fresh) > 1e-2  # the keys do carry their position
    moved = TorchSequence(model)
    with torch.inference_mode():
        moved.forward(torch.randint(0, 64, (500,), generator=gen).tolist(), 1, 64)
        moved.gather(fresh, list(range(40)))
    assert len(moved) == 540
    for mine, theirs in zip(moved.cache.layers, shifted.cache.layers):
        assert (mine.keys[..., 500:, :] - theirs.keys).abs().max() < 1e-5
        assert (mine.values[..., 500:, :] - theirs.values).abs().max() < 1e-6


def test_a_selection_packed_from_a_long_cache_equals_a_recomputed_first_layer():
    """Gathering scattered entries: the first layer (which sees no context) equals a draft
    recomputed from scratch on the selected tokens; deeper layers keep the full context they
    were read in (SpecExtend's working cache does the same), so they differ."""
    model = tiny_model(5, context=1024)
    tokens = torch.randint(0, 64, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    full = TorchSequence(model)
    selected = [*range(4), *range(100, 132), *range(260, 300)]
    with torch.inference_mode():
        full.forward(tokens, 1, 64)
        packed = TorchSequence(model)
        packed.gather(full, selected)
        fresh = TorchSequence(model)
        fresh.forward([tokens[i] for i in selected], 1, 64)
    first, fresh_first = packed.cache.layers[0], fresh.cache.layers[0]
    assert len(packed) == len(selected)
    assert (first.keys - fresh_first.keys).abs().max() < 1e-5
    assert (first.values - fresh_first.values).abs().max() < 1e-6


def test_last_attention_equals_eager_attention():
    model = tiny_model(6, context=1024)
    eager = tiny_model(6, context=1024)
    eager.config._attn_implementation = "eager"
    tokens = torch.randint(0, 64, (120,), generator=torch.Generator().manual_seed(3)).tolist()
    seq = TorchSequence(model)
    seq.keep_queries = True
    with torch.inference_mode():
        seq.forward(tokens[:100], 1, 64)
        seq.forward(tokens[100:], 20, 64)
        seq.truncate(110)  # the newest entry is now token 109, computed in the second forward
        attention = seq.last_attention()
        expected = eager(torch.tensor([tokens[:110]]), output_attentions=True).attentions[-1][0, :, -1].mean(0)
    assert attention.shape == (110,)
    assert torch.allclose(attention, expected, atol=1e-6)
    seq.keep_queries = False
    with torch.inference_mode():
        seq.forward([1], 1, 64)
    assert seq.last_attention() is None  # that query was not kept: no stale answer


class Spy(ChainSource):
    """A ChainSource that keeps the drafters it makes (to look at their working caches)."""

    def new(self, vocab, sync):
        drafter = super().new(vocab, sync)
        self.__dict__.setdefault("made", []).append(drafter)
        return drafter


@pytest.mark.parametrize("mode", ["window", "retrieval"])
@pytest.mark.parametrize("controller", ["fixed:4", "tree:depth=3,nodes=6,width=2"])
def test_greedy_output_with_a_bounded_draft_equals_target_greedy(long_pair, mode, controller):
    target, draft = long_pair
    spec = LongContext.parse(f"{mode}:budget=96,chunk=16,refresh=2,sinks=4")
    source = Spy(draft, context=spec)
    engine = Engine(target, source)
    gen = torch.Generator().manual_seed(7)
    accepted = 0
    for length in (300, 520):
        prompt = torch.randint(0, 64, (length,), generator=gen).tolist()
        tokens, records = run(engine, prompt, controller, max_new_tokens=60)
        assert tokens == reference(target, prompt, 60)
        accepted += sum(r.accepted for r in records)
        cache = source.made[-1].cache
        assert isinstance(cache, WorkingCache) and cache.mode == mode
        assert cache.selections > 1  # it re-chose what it keeps during the run
    assert accepted > 20


def test_working_cache_stays_bounded_and_tracks_the_accepted_ids(long_pair):
    target, draft = long_pair
    for mode in ("window", "retrieval"):
        spec = LongContext.parse(f"{mode}:budget=96,chunk=16,refresh=1")
        source = Spy(draft, context=spec)
        engine = Engine(target, source)
        prompt = torch.randint(0, 64, (400,), generator=torch.Generator().manual_seed(8)).tolist()
        sizes, produced = [], 0
        for event in engine.run(prompt, make_controller("fixed:3"), max_new_tokens=80):
            produced += len(event.tokens)
            cache = source.made[-1].cache
            if event.finished:
                break
            # it stands for the accepted ids but the last (and the last drafted one it never fed)
            assert len(prompt) + produced - len(cache) in (1, 2)
            sizes.append(len(cache.work))
        assert cache.selections > 1
        assert max(sizes) <= 96 + 16 + 4, (mode, max(sizes))  # budget, one chunk of slack, one step's ids


def test_short_prompts_keep_the_full_cache(long_pair):
    target, draft = long_pair
    source = Spy(draft, context=LongContext.parse("retrieval:budget=256,chunk=16"))
    prompt = list(range(50))
    tokens, _ = run(Engine(target, source), prompt, "fixed:3", max_new_tokens=10)
    assert source.made[-1].cache.mode == "full" and tokens == reference(target, prompt, 10)


def test_retrieval_keeps_the_chunks_the_target_attends_to():
    spec = LongContext.parse("retrieval:budget=64,chunk=8")
    cache = WorkingCache(as_runner(tiny_model(1, context=1024)), spec)
    scores = torch.full((200,), 1e-4)
    scores[40:48] = 0.5  # chunk 5
    scores[120:124] = 0.3  # half of chunk 15
    picked = cache._ranked(scores)
    assert set(range(40, 48)) | set(range(120, 128)) <= set(picked)
    assert picked[-16:] == list(range(184, 200))  # the two most recent chunks, always
    assert len(picked) == 64 and picked == sorted(picked)
    scores[40:48] = 0.0  # the chunk nobody attends to is dropped
    assert not set(range(40, 48)) & set(cache._ranked(scores))


@pytest.mark.parametrize("spec, message", [
    ("retrieval:chunk=512,budget=1024", "cannot hold"),
    ("retrieval:refresh=0", "refresh must be at least 1"),
    ("window:sinks=2000", "sinks leave no room"),
    ("retrieval:size=3", "unknown option"),
    ("retrieval:budget=x", "must be an integer"),
    ("sparse", "unknown long-context mode"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(SpeckvError, match=message):
        LongContext.parse(spec)


def test_auto_threshold_follows_the_cost_model():
    flat = auto_threshold(lambda ctx: 20.0, 1024)
    assert flat > 100_000  # no context cost: retrieval never pays
    steep = auto_threshold(lambda ctx: 20.0 + ctx / 1000, 1024)  # +1 ms per 1K tokens
    assert steep == 8192  # 20 + 8.2 >= 1.2 * 21.0
    assert LongContext.parse("auto").with_threshold(steep).active(9000) == "retrieval"
    assert LongContext.parse("auto").with_threshold(steep).active(5000) == "full"


def test_a_move_without_re_rotation_is_caught(monkeypatch):
    """The broken variant: gathering keys without rotating them fails the equality above."""
    import speckv.backends.hf as hf

    def unrotated(module, like, delta):
        shape = (1, 1, len(delta), like.shape[-1])
        return torch.ones(shape), torch.zeros(shape)

    monkeypatch.setattr(hf, "_rotation", unrotated)
    with pytest.raises(AssertionError):
        test_moved_keys_equal_keys_recomputed_at_the_new_positions()


def test_a_remembered_prompt_is_copied_not_recomputed():
    model = tiny_model(9, context=2048)
    runner = as_runner(model)
    runner.keep_prompts = True
    fed = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: fed.append(i[0].shape[1]))
    doc = torch.randint(0, 64, (700,), generator=torch.Generator().manual_seed(10)).tolist()
    with torch.inference_mode():
        first = runner.sequence().forward(doc, 1, 64)
        assert sum(fed) == 700
        fed.clear()
        again = runner.sequence()
        logits = again.forward(doc + [5, 6], 2, 64)  # the same document, then a question
        assert sum(fed) == 2  # only the new tokens went through the model
        plain = TorchSequence(model).forward(doc + [5, 6], 2, 64)
        assert torch.allclose(logits, plain, atol=1e-5) and len(again) == 702
        assert torch.allclose(first, TorchSequence(model).forward(doc, 1, 64), atol=1e-5)
        fed.clear()
        other = runner.sequence()
        other.forward([7] + doc[1:], 1, 64)  # another document: nothing to copy
        assert sum(fed) == 700
    hook.remove()
