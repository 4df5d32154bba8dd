"""The CLI on SmolLM2-135M (as draft and target): JSON output and one-line errors with exit 2."""

import json

import pytest

from speckv.models import pull

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol():
    return str(pull(SMOL))



def test_json_lines_and_lossless_greedy(cli, smol, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 2+2?"}) + "\n" + json.dumps({"turns": ["Name three colors."]}) + "\n")
    common = ["generate", "--prompts-file", str(prompts), "--draft", SMOL, "--target", SMOL, "--dtype", "float32",
              "--max-new-tokens", "24", "--json"]
    code, out, err = cli(*common, "--controller", "fixed:4")
    assert code == 0, err
    spec = [json.loads(line) for line in out.splitlines()]
    code, out, _ = cli(*common, "--controller", "autoregressive")
    base = [json.loads(line) for line in out.splitlines()]
    assert len(spec) == len(base) == 2
    for s, b in zip(spec, base):
        assert {"prompt_ids", "token_ids", "text", "stats"} <= s.keys()
        assert {"new_tokens", "steps", "mean_accepted", "wall_s", "tokens_per_s"} <= s["stats"].keys()
        assert s["token_ids"] == b["token_ids"] and s["prompt_ids"] == b["prompt_ids"]
        assert s["stats"]["mean_accepted"] > 0  # same model drafting: everything is accepted
        assert b["stats"]["steps"] == b["stats"]["new_tokens"]


def test_streaming_text(cli, smol):
    code, out, err = cli("generate", "Say hello.", "--draft", SMOL, "--target", SMOL,
                         "--max-new-tokens", "8", "--temperature", "0.7", "--seed", "1")
    assert code == 0, err
    assert out.strip()


@pytest.mark.parametrize("args,message", [
    (["generate", ""], "empty prompt"),
    (["generate", "hi", "--max-new-tokens", "0"], "must be positive"),
    (["generate", "hi", "--controller", "fixed:0"], "out of range"),
    (["generate", "hi", "--controller", "nope"], "unknown controller"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "hi", "--temperature", "1", "--top-p", "1.5"], "top_p"),
    (["generate", "hi", "--temperature", "1", "--top-k", "0"], "top_k"),
    (["generate", "hi", "--target", "no-such-model"], "unknown model"),
    (["generate"], "exactly one"),
    (["models", "pull", "no-such-model"], "unknown model"),
    (["models", "path", "/nonexistent/dir"], "unknown model"),
])
def test_bad_input_is_one_line_exit_2(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_malformed_jsonl_names_file_and_line(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    code, _, err = cli("generate", "--prompts-file", str(bad))
    assert code == 2 and f"{bad}:2:" in err
    bad.write_text('{"other": 1}\n')
    code, _, err = cli("generate", "--prompts-file", str(bad))
    assert code == 2 and f"{bad}:1:" in err


def test_prompt_longer_than_context(cli, smol):
    code, _, err = cli("generate", "word " * 9000, "--raw", "--target", SMOL,
                       "--controller", "autoregressive")
    assert code == 2 and "context" in err


def test_directory_without_config_is_refused(cli, tmp_path):
    code, _, err = cli("models", "path", str(tmp_path))
    assert code == 2 and "no config.json" in err


@pytest.mark.parametrize("args,message", [
    (["nosuchcmd"], "No such command 'nosuchcmd'"),
    (["generate", "--nosuchflag"], "No such option: --nosuchflag"),
    (["models", "info", "x", "--context", "abc"], "--context"),
    (["models", "nosuch"], "No such command"),
])
def test_usage_errors_are_one_line_exit_2(cli, args, message):
    code, _, err = cli(*args)
    assert code == 2 and message in err and err.startswith("speckv: error: ")
    assert len(err.strip().splitlines()) == 1


def test_no_arguments_prints_help(cli):
    code, out, err = cli()
    assert code == 0 and "Usage:" in out and "generate" in out and not err


def test_ctrl_c_exits_130_with_one_line(cli, monkeypatch):
    import speckv.models.provision as provision

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(provision, "pull", interrupted)
    code, _, err = cli("models", "pull", SMOL)
    assert code == 130 and err.strip() == "speckv: error: interrupted"


def test_sigint_during_generation_exits_130(smol):
    """A real Ctrl-C (SIGINT) while tokens stream: exit 130, one line, no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "speckv", "generate", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", "--raw", "--target", SMOL,
         "--controller", "autoregressive", "--max-new-tokens", "4000"],  # counting on: far from done at the signal
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # as from a terminal: a run started in the background by a shell (`cmd &`) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.read(8)  # generation has started
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.decode().strip().splitlines()[-1] == "speckv: error: interrupted" and b"Traceback" not in err


def test_demo_shows_auto_beside_the_peers(cli, smol):
    """On transformers the demo's table has auto, fixed:4, the target alone and assisted generation,
    per task; in float32 every speckv method reproduces the target's output."""
    code, out, err = cli("demo", "--target", SMOL, "--draft", SMOL, "--dtype", "float32", "--tasks", "code,chat",
                         "--max-new-tokens", "8", "--backend", "torch")
    assert code == 0, err
    lines = {}
    for line in out.splitlines():  # the table's rows (the sample output below starts with "auto on")
        if line.strip():
            lines.setdefault(line.split()[0], line)
    assert {"autoregressive", "auto", "fixed:4", "hf-assisted"} <= lines.keys()
    for method in ("auto", "fixed:4"):
        assert lines[method].rstrip().endswith("100%")
    assert "code" in out and "chat" in out and "auto on " in out
