"""llama.cpp's own server as a peer in `speckv bench`: its target alone (`llamacpp-server`) and its
speculative decoding (`llamacpp-spec`: `--spec-type draft-simple` with llama.cpp's defaults;
`llamacpp-spec:N`: at most N drafted tokens, no minimum), run the way a user runs them.

Invariants:
- A peer is a real llama-server process on loopback, started once per configuration for a bench
  and stopped at its end (or on any failure); its log goes to a temporary file that an error names.
- It gets the same prompt token ids as our methods (so the same chat template), greedy (top-1,
  temperature 0), no prompt cache, our thread count and our GGUF files at the loaded levels.
- Its tokens/s is new tokens over the HTTP round trip of the request, prompt processing included,
  as our wall time includes our prefill; its decode seconds are llama-server's own `predicted_ms`
  (after its prompt processing, HTTP excluded: its best figure).
- The binary: $SPECKV_LLAMA_SERVER, else $SPECKV_HOME/llama.cpp/bin/llama-server (what
  scripts/build_llama_server.sh builds), else llama-server on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from speckv.errors import SpeckvError

SPEC_ARGS = ["--spec-type", "draft-simple"]  # in llama.cpp b11434 `-md` alone loads a draft but does not speculate


def server_binary() -> Path:
    from speckv.models.provision import cache_home

    candidates = [os.environ.get("SPECKV_LLAMA_SERVER"), str(cache_home() / "llama.cpp" / "bin" / "llama-server"),
                  shutil.which("llama-server")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise SpeckvError("llama.cpp peers need the llama-server binary: run scripts/build_llama_server.sh "
                      "(or set SPECKV_LLAMA_SERVER)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class PeerServer:
    """One llama-server process serving one configuration."""

    def __init__(self, target: Path, draft: Path | None, extra: list[str], threads: int, context: int = 8192):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="speckv-llama-server-", suffix=".log")[1])
        cmd = [str(server_binary()), "-m", str(target), "-t", str(threads), "-tb", str(threads), "-c", str(context),
               "--host", "127.0.0.1", "--port", str(self.port), "-np", "1", "--no-warmup"]
        if draft is not None:
            cmd += ["-md", str(draft), "-td", str(threads), "-tbd", str(threads), *extra]
        self.cmd = cmd
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise SpeckvError(f"llama-server exited with {self.proc.returncode} at start; see {self.log}")
            try:
                if _post(self.base + "/health", timeout=2).get("status") == "ok":
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            if time.time() > deadline:
                self.stop()
                raise SpeckvError(f"llama-server did not become ready in 300 s; see {self.log}")
            time.sleep(0.2)
        self.complete([1, 2, 3], 4)  # untimed: pages the weights in, as our first run's warm-up does

    def complete(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], float, float]:
        """(new token ids, seconds of the HTTP round trip, seconds it reports decoding)."""
        body = {"prompt": ids, "n_predict": max_new_tokens, "temperature": 0.0, "top_k": 1, "seed": 0,
                "cache_prompt": False, "stream": False, "return_tokens": True}
        t0 = time.perf_counter()
        try:
            out = _post(self.base + "/completion", body)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise SpeckvError(f"llama-server request failed ({exc}); see {self.log}") from None
        wall = time.perf_counter() - t0
        return list(out.get("tokens", [])), wall, out.get("timings", {}).get("predicted_ms", wall * 1000) / 1000

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()


class Peers:
    """The llama-server peers of one bench, started on first use, all stopped by close()."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.servers: dict[str, PeerServer] = {}

    def run(self, spec, ids: list[int], max_new_tokens: int) -> tuple[list[int], float, float]:
        key = str(spec)
        if key not in self.servers:
            dec = self.decoder
            if dec.target.backend != "llamacpp":
                raise SpeckvError(f"{key} runs llama.cpp's own server on our GGUF files: use --backend llamacpp")
            extra = []
            if spec.name == "llamacpp-spec":
                if dec.draft is None:
                    raise SpeckvError(f"{key} needs a draft model")
                extra = SPEC_ARGS + (["--spec-draft-n-max", str(spec.gamma), "--spec-draft-n-min", "0"] if spec.gamma else [])
            draft = dec.draft.path if spec.name == "llamacpp-spec" else None
            self.servers[key] = PeerServer(dec.target.path, draft, extra, dec.target.runner.threads)
        return self.servers[key].complete(ids, max_new_tokens)

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
