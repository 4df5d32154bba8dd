"""`speckv serve` (issue 12, item 3): the OpenAI-compatible server.

The official `openai` client and raw HTTP against real uvicorn servers on loopback ports: SmolLM2
for the chat template and the CLI (SIGTERM), tiny random models with a one-token-per-character
tokenizer for everything that needs many generations or a controlled pace (a controller that
sleeps or waits on a gate makes "busy", "queued" and "cancelled" states deterministic)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

import speckv
from conftest import CharTokenizer
from speckv.api import Decoder
from speckv.control.fixed import Fixed
from speckv.models.load import LoadedModel
from speckv.server import create_app

SMOL = "smollm2-135m-instruct"
class Paced(Fixed):
    """fixed:4 that waits for `gate` (and then `delay` s) before every step: a generation we can
    hold, or slow down, without depending on the machine's speed."""

    def __init__(self, delay: float = 0.0):
        super().__init__(4)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.delay = delay

    def __deepcopy__(self, memo):  # the Decoder copies its default controller per run: keep one gate
        return self

    def budget(self) -> int:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        time.sleep(self.delay)
        return self.gamma


def tiny_decoder(tiny_pair, controller=None) -> Decoder:
    target, draft = tiny_pair
    return Decoder(LoadedModel("tiny", Path("."), target, CharTokenizer(), "fp32"),
                   LoadedModel("tiny-draft", Path("."), draft, CharTokenizer(), "fp32"), controller or "fixed:4")


@contextmanager
def running(app):
    """Serve app with uvicorn on a free loopback port in a background thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def metric(text: str, name: str, **labels) -> float | None:
    """One sample's value from Prometheus text (labels matched as a subset)."""
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            return float(m.group(2))
    return None


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_openai_error(response: httpx.Response, status: int, type_: str = "invalid_request_error") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == type_ and body["error"]["message"], body
    return body["error"]


def sse_events(lines):
    """`data:` payloads of an SSE stream as they arrive, JSON-decoded ("[DONE]" kept as a string)."""
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            yield data if data == "[DONE]" else json.loads(data)


# ---------------------------------------------------------------- SmolLM2 through the openai client


@pytest.fixture(scope="module")
def smol():
    from speckv.models import pull

    pull(SMOL)
    return speckv.load(target=SMOL, draft=SMOL, dtype="float32", controller="fixed:4")


def test_openai_client_chat_stream_completions_models(smol):
    conversation = [{"role": "system", "content": "You answer in one short sentence."},
                    {"role": "user", "content": "Name a color."},
                    {"role": "assistant", "content": "Blue."},
                    {"role": "user", "content": "Name a fruit."}]
    ids = smol.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    expected = smol.generate(ids, max_new_tokens=10)
    prompt = "The capital of France is"
    expected_text = smol.generate(smol.tokenizer(prompt)["input_ids"], max_new_tokens=8)

    with running(create_app(smol, queue_size=4, timeout=120)) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == [SMOL]
        assert client.models.retrieve(SMOL).id == SMOL

        chat = client.chat.completions.create(model=SMOL, messages=conversation, max_tokens=10, temperature=0)
        choice = chat.choices[0]
        assert choice.message.role == "assistant" and choice.message.content == expected.text
        assert choice.finish_reason == {"eos": "stop", "stop": "stop", "length": "length"}[expected.finish_reason]
        usage = chat.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), len(expected.token_ids))
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        ext = usage.model_extra["speckv"]
        assert ext["controller"] == "fixed:4" and ext["steps"] == len(expected.steps)
        assert ext["accepted"] == sum(s.accepted for s in expected.steps) and ext["tokens_per_s"] > 0

        stream = client.chat.completions.create(model=SMOL, messages=conversation, max_completion_tokens=10,
                                                temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        deltas = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert deltas == chat.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens

        text = client.completions.create(model=SMOL, prompt=prompt, max_tokens=8, temperature=0)
        assert text.choices[0].text == expected_text.text
        assert text.usage.completion_tokens == len(expected_text.token_ids)
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model=SMOL, prompt=prompt, max_tokens=8, temperature=0, stream=True))
        assert streamed == expected_text.text

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=conversation, max_tokens=2)


# ---------------------------------------------------------------- tiny models: load, queue, errors


@pytest.fixture(scope="module")
def tiny_server(tiny_pair):
    dec = tiny_decoder(tiny_pair)
    with running(create_app(dec, queue_size=16, timeout=60)) as base:
        yield dec, base


PROMPTS = ["hello there", "abc", "the quick brown fox", "x y z", "speculate 42", "a", "zebra\nline",
           "99 bottles", "Mixed Case", "one two", "tokens", "q"]


def test_twelve_concurrent_requests_all_answered_correctly(tiny_server):
    dec, base = tiny_server
    sampled = {p: i % 2 == 1 for i, p in enumerate(PROMPTS)}  # every other request samples (seeded)
    answers: dict[str, dict] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(PROMPTS))

    def ask(prompt: str) -> None:
        body = {"prompt": prompt, "max_tokens": 24, "temperature": 0.9 if sampled[prompt] else 0, "seed": 5}
        try:
            barrier.wait()
            r = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
            r.raise_for_status()
            answers[prompt] = r.json()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(answers) == len(PROMPTS)
    for p in PROMPTS:
        kwargs = dict(do_sample=True, temperature=0.9, seed=5) if sampled[p] else {}
        expected = dec.generate(dec.encode(p, raw=True), max_new_tokens=24, **kwargs)
        got = answers[p]
        assert got["choices"][0]["text"] == expected.text, p
        assert got["usage"]["completion_tokens"] == len(expected.token_ids) == 24
        assert got["choices"][0]["finish_reason"] == "length"


def test_request_controller_and_stop_are_honoured(tiny_server):
    dec, base = tiny_server
    ids = dec.encode("hello there", raw=True)
    reference = dec.generate(ids, max_new_tokens=30)
    r = httpx.post(f"{base}/v1/completions", json={"prompt": ids, "max_tokens": 30, "temperature": 0,
                                                   "controller": "autoregressive"}, timeout=30).json()
    assert r["choices"][0]["text"] == reference.text  # lossless: the controller changes speed only
    assert r["usage"]["speckv"]["controller"] == "autoregressive" and r["usage"]["speckv"]["drafted"] == 0
    stop = reference.text[10:12]
    r = httpx.post(f"{base}/v1/completions", json={"prompt": ids, "max_tokens": 30, "temperature": 0,
                                                   "stop": [stop, "never"]}, timeout=30).json()
    assert r["choices"][0] == {"index": 0, "text": reference.text[:reference.text.index(stop)],
                               "finish_reason": "stop", "logprobs": None}


BAD = [
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, None),  # no chat template
    ("/v1/completions", {"prompt": "abc", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"prompt": "abc", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "abc", "temperature": -0.5}, "temperature"),
    ("/v1/completions", {"prompt": "abc", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "abc", "n": 2}, None),
    ("/v1/completions", {"prompt": "abc", "logprobs": 3}, None),
    ("/v1/completions", {"prompt": ["abc", "def"]}, "prompt"),
    ("/v1/completions", {"prompt": "   "}, "prompt"),
    ("/v1/completions", {"max_tokens": 4}, "prompt"),
    ("/v1/completions", {"prompt": "abc", "controller": "bogus"}, "controller"),
    ("/v1/completions", {"prompt": "abc", "controller": "fixed:0"}, "controller"),
    ("/v1/completions", {"prompt": "abc", "controller": "speckv:/etc/hosts"}, "controller"),  # no file reads
    ("/v1/completions", {"prompt": "abc", "controller": "speckv"}, None),  # not trained: found by the worker
    ("/v1/completions", {"prompt": "a" * 300}, None),  # longer than the tiny context (256)
    ("/v1/completions", {"prompt": [1, 2, 64]}, None),  # id outside the vocabulary
    ("/v1/completions", {"prompt": "abc", "stop": 3}, "stop"),
]


def test_bad_requests_get_400_in_openai_shape(tiny_server):
    _, base = tiny_server
    for path, body, param in BAD:
        err = assert_openai_error(httpx.post(f"{base}{path}", json=body, timeout=30), 400)
        assert err["param"] == param, (body, err)
    for raw in (b"{not json", b'{"prompt": "abc", "temperature": NaN}', b"[]", b'{"prompt": "ab\\ud800"}',
                b'{"prompt": "abc", "seed": 18446744073709551616}'):
        assert_openai_error(httpx.post(f"{base}/v1/completions", content=raw,
                                       headers={"content-type": "application/json"}), 400)
    lone_surrogate = b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}'
    assert_openai_error(httpx.post(f"{base}/v1/chat/completions", content=lone_surrogate,
                                   headers={"content-type": "application/json"}), 400)
    err = assert_openai_error(httpx.post(f"{base}/v1/completions", json={"prompt": "abc", "model": "gpt-4"}), 404)
    assert err["code"] == "model_not_found"
    assert_openai_error(httpx.get(f"{base}/v1/nothing"), 404)
    ok = httpx.post(f"{base}/v1/completions", json={"prompt": "abc", "model": "tiny", "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3  # still serving


def test_queue_full_is_429_with_retry_after(tiny_pair):
    paced = Paced()
    paced.gate.clear()
    app = create_app(tiny_decoder(tiny_pair, paced), queue_size=1, timeout=60)
    with running(app) as base:
        results: dict[str, httpx.Response] = {}

        def ask(name: str) -> None:
            results[name] = httpx.post(f"{base}/v1/completions", json={"prompt": name, "max_tokens": 8}, timeout=60)

        running_one = threading.Thread(target=ask, args=("first",))
        running_one.start()
        assert paced.entered.wait(10)  # the worker holds the first request
        waiting = threading.Thread(target=ask, args=("second",))
        waiting.start()
        wait_for(lambda: httpx.get(f"{base}/health").json()["queue_depth"] == 1, what="a queued request")
        refused = httpx.post(f"{base}/v1/completions", json={"prompt": "third"}, timeout=10)
        err = assert_openai_error(refused, 429, "rate_limit_error")
        assert err["code"] == "queue_full" and int(refused.headers["Retry-After"]) >= 1
        paced.gate.set()
        running_one.join(30)
        waiting.join(30)
        assert [results[n].status_code for n in ("first", "second")] == [200, 200]
        text = httpx.get(f"{base}/metrics").text
        assert metric(text, "speckv_requests_total", route="/v1/completions", code="429") == 1


def test_client_disconnect_cancels_the_generation(tiny_pair):
    # 0.2 s per step, at most 5 tokens a step, no EOS in the tiny vocabulary: 240 tokens take > 9 s
    app = create_app(tiny_decoder(tiny_pair, Paced(delay=0.2)), queue_size=4, timeout=60)
    with running(app) as base:
        body = {"prompt": "hello", "max_tokens": 240, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        t0 = time.monotonic()  # the connection is closed here

        def cancelled(outcome: str = "cancelled"):
            text = httpx.get(f"{base}/metrics").text
            done = metric(text, "speckv_generations_total", outcome=outcome) == 1
            return done and metric(text, "speckv_worker_busy") == 0 and text

        text = wait_for(cancelled, timeout=5, what="the streamed generation to be cancelled")
        assert time.monotonic() - t0 < 5
        assert metric(text, "speckv_generations_total", outcome="completed") is None
        assert metric(text, "speckv_generated_tokens_total") < 240

        # non-streaming: the client gives up (read timeout) and the worker stops as well
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/completions", json={**body, "stream": False}, timeout=1.0)
        wait_for(lambda: metric(httpx.get(f"{base}/metrics").text, "speckv_generations_total",
                                outcome="cancelled") == 2, timeout=5, what="the second cancellation")
        assert httpx.get(f"{base}/health").json() == {"status": "ok", "model": "tiny", "busy": False,
                                                      "queue_depth": 0, "queue_capacity": 4}


def test_request_timeout_is_504_or_a_stream_error_event(tiny_pair):
    app = create_app(tiny_decoder(tiny_pair, Paced(delay=0.1)), queue_size=4, timeout=0.6)
    with running(app) as base:
        body = {"prompt": "hello", "max_tokens": 240, "temperature": 0}
        err = assert_openai_error(httpx.post(f"{base}/v1/completions", json=body, timeout=10), 504, "timeout")
        assert err["code"] == "timeout"
        with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}, timeout=10) as r:
            events = list(sse_events(r.iter_lines()))
        assert r.status_code == 200 and events[-1] == "[DONE]"
        assert events[-2]["error"]["type"] == "timeout"
        assert all("choices" in e for e in events[:-2])
        wait_for(lambda: metric(httpx.get(f"{base}/metrics").text, "speckv_generations_total",
                                outcome="timeout") == 2, timeout=5, what="both generations to stop")


def test_metrics_and_health(tiny_pair):
    app = create_app(tiny_decoder(tiny_pair), queue_size=3, timeout=60)
    with running(app) as base:
        health = httpx.get(f"{base}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        usages = [httpx.post(f"{base}/v1/completions", json={"prompt": p, "max_tokens": n, "temperature": 0},
                             timeout=30).json()["usage"] for p, n in (("abc", 12), ("hello", 20))]
        r = httpx.get(f"{base}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        for name in ("speckv_requests_total", "speckv_request_duration_seconds_bucket", "speckv_generations_total",
                     "speckv_generated_tokens_total", "speckv_prompt_tokens_total", "speckv_generation_seconds_sum",
                     "speckv_last_tokens_per_second", "speckv_steps_total", "speckv_drafted_tokens_total",
                     "speckv_accepted_tokens_total", "speckv_accepted_per_step_bucket", "speckv_queue_depth",
                     "speckv_queue_capacity", "speckv_queue_wait_seconds_count", "speckv_worker_busy",
                     "speckv_server_info"):
            assert metric(text, name) is not None, name
        assert metric(text, "speckv_generated_tokens_total", controller="fixed:4") == 32
        assert metric(text, "speckv_prompt_tokens_total") == 8
        assert metric(text, "speckv_generations_total", controller="fixed:4", outcome="completed") == 2
        assert metric(text, "speckv_steps_total") == sum(u["speckv"]["steps"] for u in usages)
        assert metric(text, "speckv_accepted_tokens_total") == sum(u["speckv"]["accepted"] for u in usages)
        assert metric(text, "speckv_drafted_tokens_total") == sum(u["speckv"]["drafted"] for u in usages)
        assert metric(text, "speckv_accepted_per_step_count") == sum(u["speckv"]["steps"] for u in usages)
        assert metric(text, "speckv_last_tokens_per_second") > 0
        assert metric(text, "speckv_queue_capacity") == 3 and metric(text, "speckv_queue_depth") == 0
        assert metric(text, "speckv_requests_total", route="/v1/completions", code="200") == 2
        assert metric(text, "speckv_server_info", model="tiny", controller="fixed:4", draft="tiny-draft") == 1


def test_draining_refuses_new_work_with_503(tiny_pair):
    app = create_app(tiny_decoder(tiny_pair), queue_size=2, timeout=60)
    with running(app) as base:
        app.state.draining = True  # what the SIGTERM handler sets (serve.py)
        assert httpx.get(f"{base}/health").status_code == 503
        err = assert_openai_error(httpx.post(f"{base}/v1/completions", json={"prompt": "abc"}), 503,
                                  "service_unavailable")
        assert err["code"] == "shutting_down"


# ---------------------------------------------------------------- the CLI: SIGTERM drains and exits 0


def test_serve_refuses_bad_flags_before_loading_models(cli):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    with busy:
        for args, message in ((["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
                              (["--port", "70000"], "--port must be in [0, 65535]"),
                              (["--queue-size", "0"], "--queue-size must be at least 1"),
                              (["--timeout", "-1"], "--timeout must be positive"),
                              (["--controller", "bogus"], "unknown controller 'bogus'")):
            code, out, err = cli("serve", "--target", "/nonexistent/model", *args)
            assert code == 2 and out == "" and err.startswith(f"speckv: error: {message}"), (args, err)
            assert len(err.strip().splitlines()) == 1


def test_sigterm_finishes_the_inflight_stream_and_exits_zero(tmp_path):
    err = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "speckv", "serve", "--target", SMOL, "--draft", SMOL, "--dtype", "float32",
         "--controller", "autoregressive", "--port", "0", "--queue-size", "2"],
        stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()  # "speckv: serving NAME at URL", once the port is bound
        match = re.search(r"serving .* at (http://\S+)", line)
        assert match, (line, (tmp_path / "stderr").read_text())
        url = match.group(1)
        body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
                "max_tokens": 24, "temperature": 0, "stream": True}
        contents, after_signal = [], 0
        signalled_at = None
        with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as r:
            for event in sse_events(r.iter_lines()):
                if event == "[DONE]":
                    contents.append(event)
                    break
                delta = event["choices"][0]
                contents.append(delta)
                if delta["delta"].get("content") and signalled_at is None:
                    proc.send_signal(signal.SIGTERM)  # mid-generation: the first text has arrived
                    signalled_at = time.monotonic()
                elif signalled_at is not None:
                    after_signal += 1
        assert signalled_at is not None and contents[-1] == "[DONE]"
        assert contents[-2]["finish_reason"] in ("length", "stop") and after_signal >= 2
        try:  # new work is refused: the socket is closed (or, in the instant before, 503)
            late = httpx.get(url.removesuffix("/v1") + "/health", timeout=5)
            assert late.status_code == 503
        except httpx.TransportError:
            pass
        assert proc.wait(timeout=30 - (time.monotonic() - signalled_at)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        err.close()
