"""Load and soak test for `speckv serve` (issue 12, item 6): N loopback clients x M requests (or for
--soak-seconds), mixed short Spec-Bench prompts, streaming and not. Records that every request was
answered (errors counted by status, transport failures as lost), p50/p95 latency and time to first
token, aggregate tokens/s, and the server's RSS over time (from /proc/PID/status; no psutil).

Starts its own server (Qwen pair, bf16, by default) unless --url names a running one (then --pid
gives its process for RSS). Writes JSON atomically (temp file, then rename) to --out.

  .venv/bin/python benchmarks/load_soak.py --clients 4 --soak-seconds 600 --out benchmarks/results/load_soak.json
  .venv/bin/python benchmarks/load_soak.py --target smollm2-135m-instruct --draft smollm2-135m-instruct \\
      --dtype float32 --controller fixed:4 --clients 2 --requests 3 --max-tokens 16 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from speckv.data.prompts import spec_bench


@dataclass
class Outcome:
    client: int
    prompt_id: str
    category: str
    stream: bool
    status: int | None  # None: no HTTP answer at all (lost)
    latency_s: float
    ttft_s: float | None  # streaming: time to the first text
    completion_tokens: int
    finish_reason: str | None
    error: str | None = None


def short_prompts(max_chars: int, seed: int) -> list:
    """Spec-Bench first turns up to max_chars, every category mixed, shuffled reproducibly."""
    prompts = [p for p in spec_bench() if len(p.text) <= max_chars]
    random.Random(seed).shuffle(prompts)
    return prompts


def rss_mib(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) in MiB, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {k: int(v) / 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}
    return (values.get("VmRSS", 0.0), values.get("VmHWM", 0.0))


def sample_rss(pid: int, interval: float, stop: threading.Event, t0: float, out: list) -> None:
    while not stop.is_set():
        if (m := rss_mib(pid)) is not None:
            out.append({"t_s": round(time.monotonic() - t0, 2), "rss_mib": round(m[0], 1), "hwm_mib": round(m[1], 1)})
        stop.wait(interval)


def one_request(client: httpx.Client, base: str, model: str, prompt, stream: bool, max_tokens: int,
                client_id: int) -> Outcome:
    body = {"model": model, "messages": [{"role": "user", "content": prompt.text}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    t0 = time.monotonic()
    ttft, tokens, finish, status, error = None, 0, None, None, None
    try:
        if not stream:
            r = client.post(f"{base}/v1/chat/completions", json=body)
            status = r.status_code
            data = r.json()
            if status == 200:
                tokens = data["usage"]["completion_tokens"]
                finish = data["choices"][0]["finish_reason"]
            else:
                error = data.get("error", {}).get("message", r.text[:200])
        else:
            with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                status = r.status_code
                if status != 200:
                    r.read()
                    error = r.json().get("error", {}).get("message", r.text[:200])
                for line in r.iter_lines() if status == 200 else ():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        error = event["error"].get("message")
                        status = -1  # an error event inside a 200 stream
                        continue
                    for choice in event.get("choices", []):
                        if choice["delta"].get("content") and ttft is None:
                            ttft = time.monotonic() - t0
                        finish = choice.get("finish_reason") or finish
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
                if status == 200 and finish is None:
                    status, error = -2, "stream ended without a finish_reason"
    except (httpx.HTTPError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Outcome(client_id, prompt.id, prompt.category, stream, status, time.monotonic() - t0, ttft, tokens,
                   finish, error)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "speckv", "serve", "--target", args.target, "--draft", args.draft,
           "--controller", args.controller, "--dtype", args.dtype, "--host", "127.0.0.1", "--port", "0",
           "--queue-size", str(args.queue_size), "--timeout", str(args.timeout)]
    if args.compression:
        cmd += ["--compression", args.compression]
    if args.draft_compression:
        cmd += ["--draft-compression", args.draft_compression]
    log = open(args.server_log, "w") if args.server_log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    match = re.search(r"serving .* at (http://\S+)/v1", line)
    if not match:
        proc.kill()
        sys.exit(f"load_soak: the server did not start (got {line!r}; see --server-log)")
    return proc, match.group(1)


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server (base URL without /v1); default: start one")
    ap.add_argument("--pid", type=int, help="with --url: the server's process id, for RSS")
    ap.add_argument("--target", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--controller", default="auto")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--compression")
    ap.add_argument("--draft-compression")
    ap.add_argument("--queue-size", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=300.0, help="the server's per-request timeout")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=5, help="per client (ignored with --soak-seconds)")
    ap.add_argument("--soak-seconds", type=float, default=0.0, help="run for this long instead of --requests")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-prompt-chars", type=int, default=400, help="short prompts only")
    ap.add_argument("--stream-fraction", type=float, default=0.5)
    ap.add_argument("--rss-interval", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-log", help="where a started server's stderr goes")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1 or args.max_tokens < 1:
        sys.exit("load_soak: --clients, --requests and --max-tokens must be positive")

    prompts = short_prompts(args.max_prompt_chars, args.seed)
    proc, base = (None, args.url.rstrip("/")) if args.url else start_server(args)
    pid = proc.pid if proc else args.pid
    limits = httpx.Timeout(args.timeout + 60, connect=30)
    with httpx.Client(timeout=limits) as probe:
        model = probe.get(f"{base}/v1/models").json()["data"][0]["id"]
        # warm-up (first forward passes are slow), not counted
        one_request(probe, base, model, prompts[0], False, 4, -1)

    t0 = time.monotonic()
    rss: list[dict] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(pid, args.rss_interval, stop, t0, rss), daemon=True) if pid else None
    if sampler:
        sampler.start()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    deadline = t0 + args.soak_seconds if args.soak_seconds > 0 else None

    def client_loop(cid: int) -> None:
        rng = random.Random(args.seed * 1000 + cid)
        with httpx.Client(timeout=limits) as client:
            n = 0
            while (deadline is None and n < args.requests) or (deadline is not None and time.monotonic() < deadline):
                prompt = prompts[(cid * 7919 + n) % len(prompts)]
                result = one_request(client, base, model, prompt, rng.random() < args.stream_fraction,
                                     args.max_tokens, cid)
                with lock:
                    outcomes.append(result)
                n += 1

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    with httpx.Client(timeout=30) as probe:
        metrics_text = probe.get(f"{base}/metrics").text
        health = probe.get(f"{base}/health").json()
    stop.set()
    if sampler:
        sampler.join()

    exit_code = None
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = "killed after 60 s"

    ok = [o for o in outcomes if o.status == 200]
    by_status: dict[str, int] = {}
    for o in outcomes:
        key = "lost" if o.status is None else str(o.status)
        by_status[key] = by_status.get(key, 0) + 1
    latencies = [o.latency_s for o in ok]
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    tokens = sum(o.completion_tokens for o in ok)
    generations = {m.group(1): float(m.group(2)) for m in
                   re.finditer(r'speckv_generations_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)', metrics_text)}
    summary = {
        "requests": len(outcomes),
        "answered": sum(o.status is not None for o in outcomes),
        "lost": by_status.get("lost", 0),
        "ok": len(ok),
        "by_status": by_status,
        "latency_s": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
                      "p99": percentile(latencies, 0.99), "max": max(latencies, default=None)},
        "ttft_s": {"p50": percentile(ttfts, 0.5), "p95": percentile(ttfts, 0.95)},
        "completion_tokens": tokens,
        "aggregate_tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "server_generations_by_outcome": generations,
        "server_health_after": health,
        "rss_mib": {"first": rss[0]["rss_mib"] if rss else None, "last": rss[-1]["rss_mib"] if rss else None,
                    "max": max((r["rss_mib"] for r in rss), default=None)},
        "server_exit_code": exit_code,
    }
    payload = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
               | {"base_url": base, "server_pid": pid, "prompts_available": len(prompts),
                  "python": sys.version.split()[0], "cpus": os.cpu_count()},
               "summary": summary, "rss": rss, "requests": [asdict(o) for o in outcomes],
               "errors": [asdict(o) for o in outcomes if o.status != 200][:50]}
    write_json_atomic(args.out, payload)
    print(json.dumps(summary, indent=1))
    if summary["lost"] or len(ok) != len(outcomes):
        print(f"load_soak: {len(outcomes) - len(ok)} of {len(outcomes)} requests did not succeed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
