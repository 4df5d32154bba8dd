"""Run the app under uvicorn with a graceful SIGTERM: stop accepting, finish in-flight work, exit 0.

Why a pre-bound socket: a port already in use becomes a SpeckvError (one line, exit 2) instead of
uvicorn's logged exit 1, and port 0 picks a free port that the ready callback can report.

Invariants:
- After SIGTERM (or Ctrl-C) the app answers 503 to anything new that still reaches it, the
  listening socket closes, and requests in flight (queued ones included) run to their end for up to
  GRACE_S seconds; then they are cancelled and the worker stops, so the process exits within 30 s.
- A SIGTERM-initiated shutdown exits with status 0 (uvicorn re-raises the signal it caught once
  it has shut down; we make that re-raise a no-op).
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

import uvicorn

from speckv.api import Decoder
from speckv.errors import SpeckvError
from speckv.server.app import create_app

GRACE_S = 25  # uvicorn's timeout_graceful_shutdown: in-flight requests get this long after SIGTERM


class _DrainingServer(uvicorn.Server):
    """uvicorn.Server that flags the app as draining the moment a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig, frame) -> None:
        self._app.state.draining = True
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """Reserve the address without listening: the CLI binds before loading models (a busy port fails
    in a second, not after the load), and connections are refused, not left hanging, meanwhile."""
    if not 0 <= port <= 65535:
        raise SpeckvError(f"--port must be in [0, 65535] (got {port})")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SpeckvError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SpeckvError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def serve(decoder: Decoder, host: str = "127.0.0.1", port: int = 8000, *, queue_size: int = 16,
          timeout: float = 300.0, model_name: str | None = None, log_level: str = "info",
          ready: Callable[[str], None] | None = None, sock: socket.socket | None = None) -> None:
    """Serve the Decoder until SIGTERM or Ctrl-C; `ready(url)` is called once the port accepts
    connections. sock: an address reserved earlier with `bind(host, port)`."""
    if queue_size < 1:
        raise SpeckvError(f"--queue-size must be at least 1 (got {queue_size})")
    app = create_app(decoder, model_name=model_name, queue_size=queue_size, timeout=timeout)
    sock = sock or bind(host, port)
    sock.listen(128)  # from here connections wait in the backlog until uvicorn accepts them
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=GRACE_S,
                            lifespan="on")
    server = _DrainingServer(config, app)
    if ready:
        ready(f"http://{shown}:{bound_port}/v1")
    # uvicorn restores the handler it found and re-raises SIGTERM after a graceful shutdown;
    # finding this no-op there makes a SIGTERM-initiated shutdown exit 0 instead of dying by signal.
    main = threading.current_thread() is threading.main_thread()  # signals belong to the main thread
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run(sockets=[sock])
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
