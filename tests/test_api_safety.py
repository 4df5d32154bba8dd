"""The Python API and input side (issue 12, items 4 and 5): a Decoder shared by threads or by a
suspended stream gives exactly the single-threaded results, and bad input is a SpeckvError
(exit 2 with one line on the CLI), never a traceback or silently wrong behaviour."""

from __future__ import annotations

import copy
import json
import re
import threading
from pathlib import Path

import pytest

import speckv
from conftest import CHARS, CharTokenizer, tiny_decoder
from speckv.api import Decoder
from speckv.data.prompts import read_jsonl
from speckv.drafting.chain import ChainSource
from speckv.errors import SpeckvError
from speckv.models.load import LoadedModel, pick_device



@pytest.fixture
def dec(tiny_pair):
    """A fresh Decoder per test; its default controller is the stateful `auto` (cost-aware)."""
    return tiny_decoder(tiny_pair)


PROMPTS = ["Hello there", "abc", "The quick brown fox", "x y z", "Speculate 42", "a", "Zebra\nline", "99 bottles"]


def outcome(result) -> tuple:
    """Everything a run's determinism covers: ids, text and each step's controller decisions."""
    return (result.token_ids, result.text, result.finish_reason,
            [(s.budget, s.drafted, s.accepted, s.emitted) for s in result.steps])


# ---------------------------------------------------------------- concurrency (item 4)


@pytest.mark.parametrize("controller", [None, "hf-heuristic"])
def test_two_threads_on_one_decoder_match_single_threaded(tiny_pair, controller):
    """Token ids, text and every step's budget/drafted/accepted: a shared default controller
    would leave the ids right (greedy is lossless) but change the decisions."""
    dec = tiny_decoder(tiny_pair, controller)
    prompts = PROMPTS[:5]
    kwargs = dict(max_new_tokens=32)
    expected = {p: outcome(dec.generate(p, **kwargs)) for p in prompts}
    sampled = {p: outcome(dec.generate(p, do_sample=True, temperature=0.9, seed=7, **kwargs)) for p in prompts}
    got: dict[tuple, tuple] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(name: str, prompts: list[str], sampling: dict) -> None:
        try:
            barrier.wait()
            for round_ in range(2):
                for p in prompts:
                    got[name, round_, p] = outcome(dec.generate(p, **sampling, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=("greedy", prompts, {})),
               threading.Thread(target=worker, args=("sampled", prompts[::-1], dict(do_sample=True, temperature=0.9, seed=7)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (name, _, p), value in got.items():
        assert value == (expected if name == "greedy" else sampled)[p], (name, p)
    assert len(got) == 4 * len(prompts)


def test_model_work_never_overlaps(tiny_pair):
    """The Decoder's lock serializes forwards: two threads never run a model at the same time
    (a fast tokenizer refuses concurrent calls; CPU threads would oversubscribe the cores)."""
    import time

    dec = tiny_decoder(tiny_pair, "fixed:3")
    active, peak = [0], [0]

    def enter(*_):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.002)  # releases the GIL: another thread would get in here without the lock

    def leave(*_):
        active[0] -= 1

    hooks = [m.register_forward_pre_hook(enter) for m in tiny_pair] + [m.register_forward_hook(leave) for m in tiny_pair]
    try:
        threads = [threading.Thread(target=lambda p=p: dec.generate(p, max_new_tokens=12)) for p in PROMPTS[:4]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for h in hooks:
            h.remove()
    assert peak[0] == 1


def test_streams_from_two_threads(dec):
    expected = {p: dec.generate(p, max_new_tokens=24).text for p in PROMPTS}
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker(prompts):
        try:
            for p in prompts:
                got[p] = "".join(dec.stream(p, max_new_tokens=24))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(PROMPTS[:4],)), threading.Thread(target=worker, args=(PROMPTS[4:],))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == expected


def test_suspended_stream_resumes_after_another_generate(dec):
    long, other = "The quick brown fox", "Zebra\nline"
    expected = dec.generate(long, max_new_tokens=60)
    expected_other = dec.generate(other, max_new_tokens=60)
    stream = dec.stream(long, max_new_tokens=60)
    head = [next(stream) for _ in range(3)]
    assert outcome(dec.generate(other, max_new_tokens=60)) == outcome(expected_other)
    tail = list(stream)
    assert "".join(head + tail) == expected.text
    assert [CHARS.index(c) for c in "".join(head + tail)] == expected.token_ids  # one char per token


def test_stream_result_and_close(dec):
    """A drained stream's result() is generate()'s; a closed one holds exactly the pieces it gave."""
    expected = dec.generate("The quick brown fox", max_new_tokens=40)
    stream = dec.stream("The quick brown fox", max_new_tokens=40)
    text = "".join(stream)
    assert text == expected.text and outcome(stream.result()) == outcome(expected)
    stream = dec.stream("The quick brown fox", max_new_tokens=40)
    head = next(stream) + next(stream)
    stream.close()
    partial = stream.result()
    assert partial.text.startswith(head) and expected.token_ids[: len(partial.token_ids)] == partial.token_ids
    assert 0 < len(partial.token_ids) < len(expected.token_ids) and partial.stats.wall_s > 0
    assert next(stream, None) is None  # closed: nothing more runs


def test_two_suspended_streams_interleave(dec):
    a, b = "Hello there", "99 bottles"
    want_a, want_b = dec.generate(a, max_new_tokens=50).text, dec.generate(b, max_new_tokens=50).text
    streams = [dec.stream(a, max_new_tokens=50), dec.stream(b, max_new_tokens=50)]
    out: list[list[str]] = [[], []]
    live = [True, True]
    while any(live):  # alternate one piece each
        for i, s in enumerate(streams):
            if live[i]:
                piece = next(s, None)
                if piece is None:
                    live[i] = False
                else:
                    out[i].append(piece)
    assert ("".join(out[0]), "".join(out[1])) == (want_a, want_b)


def test_engine_runs_interleave(tiny_pair):
    """Two suspended Engine.run generators on one Engine: each keeps its own draft cache."""
    from speckv.control import make_controller
    from speckv.engine import Engine

    engine = Engine(tiny_pair[0], ChainSource(tiny_pair[1]))
    runs = [engine.run(p, make_controller("fixed:4"), max_new_tokens=30) for p in ([1, 2, 3], [40, 41, 42, 43, 44])]
    solo = [[t for e in Engine(tiny_pair[0], ChainSource(tiny_pair[1])).run(p, make_controller("fixed:4"), max_new_tokens=30) for t in e.tokens]
            for p in ([1, 2, 3], [40, 41, 42, 43, 44])]
    got: list[list[int]] = [[], []]
    live = [True, True]
    while any(live):
        for i, r in enumerate(runs):
            if live[i]:
                try:
                    got[i] += next(r).tokens
                except StopIteration:
                    live[i] = False
    assert got == solo


def test_the_default_controller_object_is_never_run_itself(tiny_pair):
    from speckv.control.hf import HfHeuristic

    default = HfHeuristic(3)
    dec = tiny_decoder(tiny_pair, default)
    dec.generate("Hello there", max_new_tokens=20)
    assert not hasattr(default, "gamma")  # start() ran on a per-run copy


# ---------------------------------------------------------------- bad input (item 5)


@pytest.mark.parametrize("device", ["tpu", "meta", "gpu", "cuda:x", "", "cpu:banana"])
def test_unknown_devices_are_refused(device):
    with pytest.raises(SpeckvError, match="device"):
        pick_device(device)


def test_known_devices_pass():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda")


@pytest.mark.parametrize("ids,match", [([10**9], "1000000000.*vocabulary.*64"), ([3, -1], "-1.*vocabulary.*64"),
                                       ([64], "64.*vocabulary"), ([1, 2.5], "token ids must be integers"),
                                       ([1, "a"], "token ids must be integers"), ([True], "token ids must be integers"),
                                       ([], "empty prompt")])
def test_bad_token_ids_are_user_errors(dec, ids, match):
    with pytest.raises(SpeckvError, match=match):
        dec.generate(ids, max_new_tokens=4)
    with pytest.raises(SpeckvError, match=match):
        list(dec.stream(ids, max_new_tokens=4))


def test_token_ids_at_the_vocabulary_edges_work(dec):
    assert len(dec.generate([0, 63], max_new_tokens=3).token_ids) == 3
    assert dec.generate((5, 6), max_new_tokens=3).prompt_ids == [5, 6]


@pytest.mark.parametrize("prompt", [None, 42, {"a": 1}])
def test_prompt_of_the_wrong_type(dec, prompt):
    with pytest.raises(SpeckvError, match="prompt"):
        dec.generate(prompt, max_new_tokens=3)


def test_controller_none_means_the_default(tiny_pair):
    assert tiny_decoder(tiny_pair, None).controller.name == "auto"
    target, _ = tiny_pair
    alone = Decoder(LoadedModel("tiny-target", Path("."), target, CharTokenizer(), "fp32"), None, None)
    assert alone.controller.name == "autoregressive"
    assert alone.generate("abc", max_new_tokens=3, controller=None).token_ids


def test_load_with_controller_none(monkeypatch, tiny_pair):
    """speckv.load(controller=None) (and draft=None with the default) picks auto or autoregressive."""
    import speckv.api as api
    import speckv.models.draft as draft_module

    models = {"t": tiny_pair[0], "d": tiny_pair[1]}
    monkeypatch.setattr(api, "load_model", lambda name, level, device, backend: LoadedModel(name, Path("."), models[name], CharTokenizer(), level))
    # (a copy: the draft's head is made int8 in place at the default draft level, and tiny_pair is shared)
    monkeypatch.setattr(draft_module, "load_model", lambda name, level, device, backend: LoadedModel(name, Path("."), copy.deepcopy(models[name]), CharTokenizer(), level))
    assert speckv.load("t", "d", controller=None).controller.name == "auto"
    assert speckv.load("t", None, controller=None).controller.name == "autoregressive"
    assert speckv.load("t", None).controller.name == "autoregressive"
    with pytest.raises(SpeckvError, match="controller"):
        speckv.load("t", "d", controller=4)


def test_stop_accepts_one_string(dec):
    text = dec.generate("Hello there", max_new_tokens=60).text
    # a two-character stop string whose first character shows up before the pair does
    stop = next(s for i in range(1, len(text) - 1) if (s := text[i:i + 2]) and
                text.find(s) > min(text.find(s[0]), text.find(s[1])))
    result = dec.generate("Hello there", max_new_tokens=60, stop=stop)
    assert result.text == text[: text.find(stop)] and result.finish_reason == "stop"
    assert "".join(dec.stream("Hello there", max_new_tokens=60, stop=stop)) == result.text
    assert outcome(dec.generate("Hello there", max_new_tokens=60, stop=[stop])) == outcome(result)


@pytest.mark.parametrize("stop", [3, [b"ab"], ["a", None], {"a": 1}])
def test_stop_of_the_wrong_type(dec, stop):
    with pytest.raises(SpeckvError, match="stop"):
        dec.generate("abc", max_new_tokens=3, stop=stop)


def test_lone_surrogate_prompt_is_a_user_error(dec):
    with pytest.raises(SpeckvError, match="surrogate"):
        dec.generate("abc\ud800def", max_new_tokens=3)


def test_lone_surrogate_in_prompts_file_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800 here"}\n', encoding="utf-8")
    with pytest.raises(SpeckvError, match=f"{path}:2:.*surrogate"):
        read_jsonl(path)
    path.write_text('{"turns": ["\\udfff"]}\n', encoding="utf-8")
    with pytest.raises(SpeckvError, match=f"{path}:1:.*surrogate"):
        read_jsonl(path)
    path.write_text('{"prompt": "pair \\ud83d\\ude00 ok"}\n', encoding="utf-8")  # a proper surrogate pair is one char
    assert read_jsonl(path)[0].text == "pair \U0001f600 ok"


def test_prompts_file_lines_are_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('\n{"prompt": "one"}\n\n{"prompt": "two"}\n', encoding="utf-8")
    assert [p.line for p in read_jsonl(path)] == [2, 4]
    # JSON may hold U+2028 / U+0085 unescaped: still one line each (str.splitlines() split them)
    rows = [json.dumps({"prompt": f"a{c}b"}, ensure_ascii=False) for c in "\u2028\x85\x0c"]
    path.write_text("\n".join(rows) + '\n{"other": 1}\n', encoding="utf-8")
    with pytest.raises(SpeckvError, match=f"{path}:4:"):
        read_jsonl(path)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert [(p.line, p.text) for p in read_jsonl(path)] == [(1, "a\u2028b"), (2, "a\x85b"), (3, "a\x0cb")]


def test_prepare_checks_the_context(dec):
    assert dec.prepare("abc") == [CHARS.index(c) for c in "abc"]
    with pytest.raises(SpeckvError, match="300 tokens.*context is 256"):
        dec.prepare("a" * 300)
    with pytest.raises(SpeckvError, match="vocabulary"):
        dec.prepare([99])
    kept = dec.prepare("ab" * 150, truncate_for=16)  # asked for: the oldest tokens go
    assert kept == [CHARS.index(c) for c in ("ab" * 150)[-240:]]
    assert dec.prepare("abc", truncate_for=16) == [CHARS.index(c) for c in "abc"]
    with pytest.raises(SpeckvError, match="room for 256 new tokens"):
        dec.prepare("abc", truncate_for=256)


# ---------------------------------------------------------------- CLI (SmolLM2-135M)

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 provisioned in every form the CLI may load (the GGUF too where llama.cpp is built,
    the CLI's default backend then), so a first-use progress line is not mistaken for the error."""
    import importlib.util

    from speckv.models import pull
    from speckv.models.provision import gguf_path

    if importlib.util.find_spec("llama_cpp") is not None:
        gguf_path(SMOL)
    return str(pull(SMOL))


def one_line_exit_2(code, err):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("device", ["tpu", "meta", "banana"])
def test_cli_bad_device(cli, device):
    code, out, err = cli("generate", "hi", "--device", device, "--target", "no-such-model-either")
    one_line_exit_2(code, err)
    assert "device" in err and device in err


def test_cli_overlong_prompt_on_line_2_generates_nothing(cli, smol, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi."}) + "\n" + json.dumps({"prompt": "word " * 9000}) + "\n")
    code, out, err = cli("generate", "--prompts-file", str(path), "--target", SMOL, "--raw",
                         "--controller", "autoregressive", "--max-new-tokens", "4", "--json")
    one_line_exit_2(code, err)
    assert re.search(rf"{re.escape(str(path))}:2: prompt has 9\d\d\d tokens; the model's context is 8192", err), err
    assert out == ""  # nothing generated for line 1 either


def test_cli_lone_surrogate_in_prompts_file(cli, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "\\ud800"}\n')
    code, out, err = cli("generate", "--prompts-file", str(path), "--target", "no-such-model")
    one_line_exit_2(code, err)
    assert f"{path}:2:" in err and "surrogate" in err


def test_cli_models_info_context_beyond_the_model(cli, smol):
    code, out, err = cli("models", "info", SMOL, "--context", "8190", "--compression", "fp32")
    one_line_exit_2(code, err)
    assert "8190" in err and "8192" in err


@pytest.mark.parametrize("context", ["100000", str(10**9)])
def test_cli_models_info_context_cap_before_loading(cli, context):
    code, out, err = cli("models", "info", "no-such-model", "--context", context)
    one_line_exit_2(code, err)
    assert f"--context {context}" in err and "cap" in err


@pytest.mark.parametrize("args", [["nosuchcmd"], ["generate", "--nosuchflag"], ["models", "nosuch"]])
def test_cli_unknown_command_or_option(cli, args):
    code, out, err = cli(*args)
    assert code == 2 and "Traceback" not in err


def test_cli_ctrl_c_exits_130(cli, monkeypatch):
    import speckv.models.provision as provision

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(provision, "cache_home", interrupted)
    code, out, err = cli("models", "list")
    assert code == 130 and "interrupted" in err
