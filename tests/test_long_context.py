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


@pytest.mark.parametrize("mode", ["window", "retrieval", "retrieval:read=lazy"])
@pytest.mark.parametrize("controller", ["fixed:4", "tree:depth=3,nodes=6,width=2"])
def test_greedy_output_with_a_bounded_draft_equals_target_greedy(long_pair, mode, controller):
    target, draft = long_pair
    spec = LongContext.parse(f"{mode}{',' if ':' in mode else ':'}budget=96,chunk=16,refresh=2,sinks=4")
    mode = spec.mode
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


@pytest.mark.parametrize("controller", ["fixed:4", "tree:depth=3,nodes=6,width=2"])
def test_auto_gives_mid_length_prompts_a_window_and_stays_lossless(long_pair, controller):
    """auto below its threshold: a 300-token prompt gets a 96-token window (the draft reads only
    that), a 60-token prompt the full cache; greedy output is the target's either way."""
    target, draft = long_pair
    source = Spy(draft, context=LongContext.parse("auto:window=96,threshold=100000"))
    engine = Engine(target, source)
    gen = torch.Generator().manual_seed(8)
    for length, mode in ((300, "window"), (60, "full")):
        prompt = torch.randint(0, 64, (length,), generator=gen).tolist()
        tokens, _ = run(engine, prompt, controller, max_new_tokens=60)
        assert tokens == reference(target, prompt, 60)
        cache = source.made[-1].cache
        assert cache.mode == mode
        assert cache.offset >= (length - 96 if mode == "window" else 0)  # prompt ids the draft never read


def test_working_cache_stays_bounded_and_tracks_the_accepted_ids(long_pair):
    target, draft = long_pair
    for mode in ("window", "retrieval", "retrieval:read=lazy"):
        spec = LongContext.parse(f"{mode}{',' if ':' in mode else ':'}budget=96,chunk=16,refresh=1")
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
    ("retrieval:read=partial", "read must be full or lazy"),
    ("retrieval:read=lazy,sinks=0", "needs sinks >= 1"),
    ("auto:window=-1", "window must be 0 or more"),
    ("auto:window=4", "must exceed its 4 sinks"),
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
    assert LongContext.parse("auto:window=0").with_threshold(steep).active(5000) == "full"
    # below the threshold, a prompt longer than the window gets a window of that many tokens
    mid = LongContext.parse("auto").with_threshold(steep)
    assert (mid.active(5000), mid.attended(5000), mid.at(5000).budget) == ("window", 128, 128)
    assert (mid.active(128), mid.attended(128)) == ("full", 128)
    assert mid.at(9000).reads == "lazy" and mid.attended(9000) == 1024
    # auto reads lazily unless told; retrieval is SpecExtend's full read unless told
    assert (LongContext.parse("auto").reads, LongContext.parse("retrieval").reads) == ("lazy", "full")
    assert LongContext.parse("auto:read=full").reads == "full"
    assert str(LongContext.parse("retrieval:read=lazy,budget=512")) == "retrieval:budget=512,read=lazy"
    assert LongContext.parse("window:budget=1024,sinks=300").sinks == 300  # auto's window option is auto's alone


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


def one_line_exit_2(code, err):
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, message", [
    (["generate", "hi", "--long-context", "retrieval:chunk=2000"], "cannot hold"),
    (["generate", "hi", "--long-context", "retrieval:refresh=0"], "refresh must be at least 1"),
    (["bench", "--long-context", "sliding"], "unknown long-context mode"),
    (["serve", "--long-context", "window:sinks=-1", "--port", "0"], "sinks must be 0 or more"),
])
def test_cli_refuses_bad_long_context_before_loading(cli, args, message):
    code, out, err = cli(*args, "--target", "no-such-model")  # a model that would fail to load, later
    one_line_exit_2(code, err)
    assert message in err


def test_cli_eval_long_context_refuses_bad_input_and_leaves_nothing(cli, tmp_path):
    out = tmp_path / "long"
    for args, message in ((["--long-context", "full,sparse"], "unknown long-context mode"),
                          (["--long-context", "full", "--lengths", "100"], "--lengths must lie in"),
                          (["--long-context", "full", "--controllers", "autoregressive"], "needs a controller that drafts")):
        code, _, err = cli("eval", "--out", str(out), *args)
        one_line_exit_2(code, err)
        assert message in err
    assert not out.exists()


def test_retrieval_needs_a_transformers_draft_and_window_a_draft():
    from speckv.api import _check_long_context

    with pytest.raises(SpeckvError, match="transformers backend"):
        _check_long_context("retrieval", "llamacpp")
    with pytest.raises(SpeckvError, match="drafts without one"):
        _check_long_context("window", None)
    assert _check_long_context("window", "llamacpp").mode == "window"
    auto = _check_long_context("auto", "llamacpp")  # auto: its window, never retrieval
    assert (auto.active(300), auto.active(100_000)) == ("window", "window")


def test_lazy_retrieval_reads_only_what_it_chooses(long_pair):
    """read=lazy: the draft reads the window, then each chosen chunk after the sinks alone; each
    chunk's entries equal a fresh read of sinks + chunk (every layer), and far fewer prompt tokens
    are read than the prompt holds."""
    target, draft = long_pair
    source = Spy(draft, context=LongContext.parse("retrieval:budget=96,chunk=16,refresh=1,sinks=4,read=lazy"))
    prompt = torch.randint(0, 64, (900,), generator=torch.Generator().manual_seed(11)).tolist()
    engine = Engine(target, source)
    for event in engine.run(prompt, make_controller("fixed:3"), max_new_tokens=40):
        cache = source.made[-1].cache
        if event.finished:
            break
        window = len(cache.prompt) - 92  # the draft read ids[:-1]: sinks, then its last 92
        read = [i for i in cache.where if 4 <= i < window]  # chunks read after the first window
        if len(read) >= 16:
            chunk = read[:16]
            assert chunk == list(range(chunk[0], chunk[0] + 16))
            fresh = TorchSequence(draft)
            with torch.inference_mode():
                fresh.forward(prompt[:4] + [prompt[i] for i in chunk], 1, 64)
                moved = TorchSequence(draft)
                moved.gather(cache.full, [cache.where[i] for i in range(4)] + [cache.where[i] for i in chunk])
            assert _max_diff(moved, fresh) < 1e-5
            break
    else:
        raise AssertionError("retrieval never read a chunk outside the first window")
    assert cache.read_tokens < 0.5 * len(prompt)


def test_gather_moves_tree_entries_at_the_position_they_were_computed():
    model = tiny_model(12, context=1024)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    branchy = TorchSequence(model)
    fresh = TorchSequence(model)
    with torch.inference_mode():
        branchy.forward(tokens[:2], 1, 64)
        branchy.forward(tokens[2:5] + tokens[5:], 1, 64, [1, 2, 3, 1, 5, 6])  # two branches under entry 1
        moved = TorchSequence(model)
        moved.gather(branchy, [0, 1, 5, 6, 7])  # the root and the second branch, packed
        fresh.forward(tokens[:2] + tokens[5:], 1, 64)
    assert _max_diff(moved, fresh) < 1e-5


def _row(doc, method, mode, prefill, decode, accepted, steps, drafted, draft_ms, reads=None):
    row = {"length": 8192, "doc": doc, "prompt_id": f"d{doc}", "kind": "k", "prompt_tokens": 8000, "method": method,
           "mode": mode, "new_tokens": 64, "tokens": [1] * 64, "wall_s": prefill + decode, "prefill_s": prefill,
           "decode_s": decode, "steps": steps, "drafting_steps": steps if drafted else 0, "accepted": accepted,
           "drafted": drafted, "draft_ms": draft_ms, "verify_ms": 100.0 * steps, "peak_rss_gib": 6.0}
    if reads is not None:
        row["reads_prompt"] = reads
    return row


def test_each_method_is_charged_its_own_prompt_reading():
    from speckv.bench.long_context import charge, summary

    rows = []
    for doc in range(3):
        rows += [_row(doc, "alone", "alone", 60.0, 26.0, 0, 64, 0, 0.0, False),
                 _row(doc, "full", "full", 30.0, 14.0, 40, 20, 80, 12000.0, True),  # target copied; the draft read it all
                 _row(doc, "retrieval", "retrieval", 0.5, 10.0, 38, 24, 70, 3000.0, True),  # both copied
                 _row(doc, "retrieval:read=lazy", "retrieval", 2.0, 11.0, 36, 25, 72, 3100.0, False),
                 _row(doc, "window", "window", 2.2, 12.0, 20, 30, 75, 3200.0, False)]
    import pandas as pd

    charged = charge(pd.DataFrame(rows)).set_index(["doc", "method"])
    assert charged.loc[(0, "retrieval"), "draft_prefill_s"] == 30.0  # the full read it copied
    assert charged.loc[(0, "retrieval:read=lazy"), "draft_prefill_s"] == 2.0
    assert charged.loc[(0, "alone"), "end_to_end_s"] == 86.0
    assert charged.loc[(0, "window"), "end_to_end_s"] == 60.0 + 2.2 + 12.0
    table = {r["method"]: r for r in summary(rows, ["alone", "full", "retrieval", "retrieval:read=lazy", "window"])}
    assert table["retrieval"]["decode_vs_full"][0] == 1.4  # 14 s over 10 s for the same tokens
    assert table["retrieval"]["accepted_vs_window"][0] == pytest.approx((38 / 24) / (20 / 30), abs=1e-3)
    assert table["retrieval"]["draft_ms_vs_full"][0] == pytest.approx((3000 / 70) / (12000 / 80), abs=1e-3)
    assert table["window"]["end_to_end_vs_alone"][0] == pytest.approx(86.0 / 74.2, abs=1e-3)


def test_auto_windows_only_a_hybrid_draft(tiny_pair):
    """auto's window rests on lookup copying from the whole prompt: a Decoder drafting with the
    model alone keeps the full cache below the retrieval threshold (window=0)."""
    from conftest import tiny_decoder
    from speckv.api import Decoder

    hybrid = tiny_decoder(tiny_pair)
    model_only = Decoder(hybrid.target, hybrid.draft, None, drafter="model")
    assert hybrid.drafter.kind == "hybrid" and hybrid.long_context.window == 128
    assert model_only.long_context.window == 0
    assert model_only.long_context.active(1000) == "full" and hybrid.long_context.active(1000) == "window"
