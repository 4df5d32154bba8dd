"""The llama.cpp backend on the SmolLM2 GGUF: the engine, every drafter and controller, and the CLI
run on it unchanged, and at a level where a k-token forward rounds like k one-token forwards the
greedy output is token-identical to llama.cpp's own greedy decoding (llama-cpp-python's `Llama`)."""

from __future__ import annotations

import pytest
import torch

import speckv
from speckv.errors import SpeckvError
from speckv.models.load import load_model

SMOL = "smollm2-135m-instruct"
EXACT = "f32"  # f32 weights, f32 KV cache, no flash attention: batched == one-token argmax (llamacpp_exactness.json)


@pytest.fixture(scope="module")
def smol_runner():
    return load_model(SMOL, EXACT, "cpu", "llamacpp").runner


def llama_greedy(path, prompt: list[int], n: int, stop_ids: frozenset[int]) -> list[int]:
    """llama.cpp's own greedy decoding: its Llama class with a top-1 sampler (the same f32 cache
    and plain attention as our exact level), nothing of ours."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=2, verbose=False, flash_attn=False, type_k=0, type_v=0)
    out = []
    for tok in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        if tok in stop_ids or len(out) == n:
            break
        out.append(tok)
    return out


def test_sequences_roll_back_and_never_share_state(smol_runner):
    vocab = smol_runner.vocab
    ids = list(range(200, 260))
    a = smol_runner.sequence()
    full = a.forward(ids, 5, vocab)
    assert full.shape == (5, vocab) and full.dtype == torch.float32 and len(a) == 60
    b = smol_runner.sequence()  # a second run, interleaved: its own context
    b.forward([7, 8, 9], 1, vocab)
    a.truncate(55)
    again = a.forward(ids[55:], 5, vocab)  # what was rolled back is recomputed identically
    torch.testing.assert_close(again, full, rtol=0, atol=0)
    a.close()
    c = smol_runner.sequence()  # reuses the closed run's context, cleared
    assert len(c) == 0
    torch.testing.assert_close(c.forward(ids, 5, vocab), full, rtol=0, atol=0)
    b.close(), c.close()


def test_evict_shifts_the_kept_entries_down_by_what_it_dropped(smol_runner):
    """The llama.cpp window's eviction: dropping the first 30 of 100 entries and shifting the rest
    down to 0..69 keeps every distance a later token sees, so it computes what it would have with
    the 30 dropped at their old positions (keys re-rotated in f32: close, not bitwise); without
    the shift (drop only) positions would not line up with len()."""
    L, vocab = smol_runner.lib, smol_runner.vocab
    ids = [(17 * i) % 5000 + 100 for i in range(100)]
    a, b = smol_runner.sequence(), smol_runner.sequence()
    a.forward(ids, 1, vocab)
    assert a.evict(0, 30) and len(a) == 70
    assert not a.evict(60, 30) and len(a) == 70  # past the end: refused, nothing changed
    shifted = a.forward([42, 43], 2, vocab)  # at positions 70, 71
    b.forward(ids, 1, vocab)
    L.llama_memory_seq_rm(L.llama_get_memory(b.ctx.ptr), 0, 0, 30)  # dropped, not shifted
    unshifted = b.forward([42, 43], 2, vocab)  # at positions 100, 101
    torch.testing.assert_close(shifted, unshifted, rtol=0, atol=2e-3)
    assert torch.equal(shifted.argmax(-1), unshifted.argmax(-1))
    a.close(), b.close()


def test_batched_argmax_equals_one_token_argmax(smol_runner):
    """The precision the losslessness test below relies on."""
    vocab = smol_runner.vocab
    ids = list(range(300, 340))
    s = smol_runner.sequence()
    batched = s.forward(ids, 16, vocab)
    s.truncate(24)
    single = torch.cat([s.forward([t], 1, vocab) for t in ids[24:]])
    s.close()
    assert (batched.argmax(-1) == single.argmax(-1)).all()


@pytest.fixture(scope="module")
def smol_decoder():
    return speckv.load(SMOL, SMOL, compression=EXACT, draft_compression="q4_k_m", backend="llamacpp")


PROMPTS = ["Write a Python function that checks whether a number is prime.",
           "Rename the variable x to count in: def f(x):\n    return x + 1\n# then call f(3) and print f(3)"]


@pytest.mark.parametrize("controller,drafter", [("fixed:4", "model"), ("auto", "hybrid"), ("p-min", "model"),
                                                ("hf-heuristic", "model"), ("fixed:3", "lookup"), ("auto", "model"), ("hf-confidence", "hybrid")])
def test_every_controller_and_drafter_is_llamacpps_own_greedy(smol_decoder, controller, drafter):
    dec = speckv.Decoder(smol_decoder.target, smol_decoder.draft, controller, drafter)
    for prompt in PROMPTS:
        ids = dec.prepare(prompt)
        want = llama_greedy(dec.target.path, ids, 40, dec.stop_ids)
        got = dec.generate(ids, max_new_tokens=40)
        assert [t for t in got.token_ids if t not in dec.stop_ids] == want
        assert got.stats.new_tokens == len(got.token_ids)


def test_a_window_reads_part_of_a_long_prompt_and_stays_llamacpps_own_greedy(smol_decoder):
    """The draft's window on llama.cpp (auto's tier below retrieval, or asked for): the draft reads
    the sinks and the most recent tokens of a long prompt once, then evicts the oldest tail entries
    in place as the output grows (llama.cpp's context shift), and output stays the target's."""
    auto = speckv.Decoder(smol_decoder.target, smol_decoder.draft, "auto", "hybrid", long_context="auto:window=64")
    assert auto.engine.draft.model.context.at(577).mode == "window"  # never retrieval here
    dec = speckv.Decoder(smol_decoder.target, smol_decoder.draft, "fixed:4", "model", long_context="window:budget=64,chunk=16")
    prompt = " ".join(f"item {i}: value {i * 7 % 13}." for i in range(60)) + " Continue the list:"
    ids = dec.prepare(prompt)
    assert len(ids) > 200
    want = llama_greedy(dec.target.path, ids, 40, dec.stop_ids)
    made = []
    drafter = dec.engine.new_drafter()
    dec.engine.new_drafter = lambda: made.append(drafter) or drafter
    got = dec.generate(ids, max_new_tokens=40)
    assert [t for t in got.token_ids if t not in dec.stop_ids] == want
    cache = made[0].cache
    assert cache.mode == "window" and cache.offset > len(ids) - 1 - 64  # read 64 of ids[:-1], later evicted some
    assert len(cache.work) <= 64 + 16 + 4 + 1  # bounded: the window, one chunk of slack, one step's drafts
    assert len(cache) <= len(ids) + 40  # and it still stands for the accepted ids (true indices)
    assert got.stats.mean_accepted > 0


def test_decoder_on_llamacpp_names_its_setup(smol_decoder):
    setup = smol_decoder.setup
    assert (setup.backend, setup.compression, setup.draft_compression) == ("llamacpp", EXACT, "q4_k_m")
    assert setup.slug().endswith("--llamacpp") and smol_decoder.target.runner.threads >= 1


def test_cli_generate_on_llamacpp(cli):
    code, out, err = cli("generate", "Say hi.", "--target", SMOL, "--draft", SMOL, "--backend", "llamacpp",
                         "--compression", EXACT, "--max-new-tokens", "8", "--json")
    assert code == 0, err
    import json

    assert len(json.loads(out)["token_ids"]) <= 8


@pytest.mark.parametrize("args,message", [
    (["--backend", "llamacpp", "--compression", "nf4"], "unknown compression 'nf4' on llama.cpp"),
    (["--backend", "llamacpp", "--draft-vocab", "100"], "needs the transformers backend"),
    (["--backend", "llamacpp", "--device", "cuda"], "CUDA"),
    (["--backend", "tpu"], "unknown backend"),
])
def test_bad_backend_input_is_one_line_before_loading(cli, args, message):
    code, _, err = cli("generate", "hi", "--target", "no-such-model", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_unreadable_gguf_and_foreign_vocabulary_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(200))
    code, _, err = cli("generate", "hi", "--target", str(bad), "--draft", str(bad), "--backend", "llamacpp")
    assert code == 2 and "bad.gguf" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("generate", "hi", "--target", SMOL, "--draft", "qwen2.5-coder-0.5b-instruct", "--backend", "llamacpp",
                       "--max-new-tokens", "2")
    assert code == 2 and "different tokenizers" in err and len(err.strip().splitlines()) == 1, err


def test_hf_directory_is_refused_by_llamacpp(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpeckvError, match="not a .gguf file"):
        load_model(str(tmp_path), None, "cpu", "llamacpp")


def test_ctrl_c_in_the_log_callback_is_raised_after_the_call():
    """llama.cpp logs through a Python callback (several times per token); ctypes drops an
    exception raised there. An interrupt that lands in it is held and raised when the call
    returns; anywhere else it raises at once, as Python's default handler does."""
    import signal
    from types import SimpleNamespace

    from speckv.backends import llamacpp

    in_callback = SimpleNamespace(f_code=llamacpp._drop_log.__code__)
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with llamacpp._interruptible():
            llamacpp._on_sigint(signal.SIGINT, in_callback)  # what ctypes would have swallowed
            reached.append("the call ran on")
    assert reached == ["the call ran on"]
    with pytest.raises(KeyboardInterrupt):
        llamacpp._on_sigint(signal.SIGINT, None)
    with llamacpp._interruptible():  # nothing pending from before: a later call is not interrupted
        pass
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as Python starts from a terminal
    try:
        llamacpp.lib()
        assert signal.getsignal(signal.SIGINT) is llamacpp._on_sigint  # installed over Python's default
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        llamacpp.lib()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # anything else is left alone
    finally:
        signal.signal(signal.SIGINT, previous)
