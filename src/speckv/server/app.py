"""The FastAPI app: OpenAI's chat and text completions (JSON or SSE), models, health, metrics.

Invariants:
- Every error body has OpenAI's shape `{"error": {message, type, param, code}}`: 400 bad input
  (FastAPI's 422 included), 404 unknown model or route, 429 queue full (with Retry-After), 499 the
  client left before its answer, 503 draining for shutdown, 504 the request's deadline passed.
- A request is answered with an error status only before its first byte: once a stream has begun,
  a later failure is an SSE `{"error": ...}` event followed by `data: [DONE]`.
- Whoever stops listening cancels: a handler that gives up (disconnect, deadline, exception)
  cancels its job, and a stream's generator cancels it when closed, so the worker never keeps
  generating for nobody.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from speckv.api import Decoder
from speckv.errors import SpeckvError
from speckv.server.generation import DecoderBackend, Summary
from speckv.server.metrics import Metrics
from speckv.server.protocol import ChatRequest, CompletionRequest, error_body, new_id, now
from speckv.server.worker import Done, Failed, Job, Piece, QueueFull, Started, Worker

POLL_S = 0.25  # how often a waiting handler checks whether its client is still there
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


class Gone(Exception):
    """The client disconnected, or the request's deadline passed (`timeout` says which)."""

    def __init__(self, timeout: bool):
        self.timeout = timeout


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
          code: str | int | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def _failure_response(event: Failed) -> JSONResponse:
    if event.reason == "invalid":
        return error(400, str(event.error))
    if event.reason == "timeout":
        return error(504, "request timed out", "timeout", code="timeout")
    if event.reason == "shutdown":
        return error(503, "server shutting down", "service_unavailable", code="shutting_down")
    if event.reason == "cancelled":
        return error(499, "client closed the request", "cancelled", code="cancelled")
    return error(500, f"internal error: {type(event.error).__name__}: {event.error}", "server_error")


class _Waiter:
    """Waits for one job's events on behalf of one HTTP request. Gives up, cancelling the job, when
    the deadline passes or (with a request to watch) when the client has gone; the client is checked
    every POLL_S seconds even while events keep arriving."""

    def __init__(self, job: Job, request: Request | None = None):
        self.job = job
        self.request = request
        self.checked = 0.0

    async def next(self) -> Started | Piece | Done | Failed:
        job = self.job
        while True:
            now = time.monotonic()
            if now >= job.deadline:
                job.cancel("timeout")
                raise Gone(timeout=True)
            if self.request is not None and now - self.checked >= POLL_S:
                self.checked = now
                if await self.request.is_disconnected():
                    job.cancel("cancelled")
                    raise Gone(timeout=False)
            try:
                async with asyncio.timeout(min(job.deadline - now, POLL_S)):
                    return await job.events.get()
            except TimeoutError:
                pass


class _CountRequests:
    """ASGI middleware: count responses by route and status, time them to the last byte."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        t0 = time.perf_counter()

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                self.metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(decoder: Decoder, *, model_name: str | None = None, queue_size: int = 16,
               timeout: float = 300.0) -> FastAPI:
    """An OpenAI-compatible app over an already loaded Decoder (its worker starts with the app).

    model_name: the id clients send as `model` (default: the target's name); queue_size: requests
    that may wait for the worker (more get 429); timeout: seconds per request, queueing included."""
    if timeout <= 0:
        raise SpeckvError(f"timeout must be positive (got {timeout})")
    name = model_name or decoder.target.name
    backend = DecoderBackend(decoder)
    metrics = Metrics({"model": name, "target": decoder.target.name,
                       "draft": decoder.draft.name if decoder.draft else "-",
                       "target_compression": decoder.target.compression,
                       "draft_compression": decoder.draft.compression if decoder.draft else "-",
                       "device": decoder.setup.device, "controller": backend.default_controller})
    worker = Worker(backend, queue_size, metrics)
    created = now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        app.state.draining = True
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="speckv", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.draining = False
    app.state.worker = worker
    app.state.metrics = metrics
    app.add_middleware(_CountRequests, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ())[1:]]  # after "body"; may end in a union member's type
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        field = first["loc"][1] if len(first.get("loc", ())) > 1 and isinstance(first["loc"][1], str) else None
        return error(400, f"{'.'.join(loc)}: {message}" if loc else message, param=field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error(exc.status_code, str(exc.detail), type_, code=exc.status_code, headers=exc.headers)

    def _refusal(request_model: str | None) -> JSONResponse | None:
        if app.state.draining:
            return error(503, "server shutting down", "service_unavailable", code="shutting_down")
        if request_model not in (None, name):  # as OpenAI and vLLM do: the model must exist
            return error(404, f"the model `{request_model}` does not exist; this server serves `{name}`",
                         param="model", code="model_not_found")
        return None

    async def _generate(request: Request, body: ChatRequest | CompletionRequest, chat: bool) -> Response:
        if (refused := _refusal(body.model)) is not None:
            return refused
        job = Job(body, asyncio.get_running_loop(), time.monotonic() + timeout)
        try:
            worker.submit(job)
        except QueueFull:
            retry = worker.retry_after()
            return error(429, f"server busy: {worker.capacity} requests already waiting; retry in {retry} s",
                         "rate_limit_error", code="queue_full", headers={"Retry-After": str(retry)})
        handed_to_stream = False
        waiter = _Waiter(job, request)
        try:
            first = await waiter.next()
            if isinstance(first, Failed):
                return _failure_response(first)
            if body.stream:
                handed_to_stream = True
                return StreamingResponse(_sse(job, body, chat, first), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            pieces = []
            while True:
                event = await waiter.next()
                if isinstance(event, Piece):
                    pieces.append(event.text)
                elif isinstance(event, Failed):
                    return _failure_response(event)
                elif isinstance(event, Done):
                    return JSONResponse(_full_response(body, chat, "".join(pieces), event.summary))
        except Gone as gone:
            if gone.timeout:
                return error(504, f"request timed out after {timeout:g} s", "timeout", code="timeout")
            return error(499, "client closed the request", "cancelled", code="cancelled")
        finally:
            if not handed_to_stream:
                job.cancel("cancelled")  # no-op once finished

    def _full_response(body, chat: bool, text: str, summary: Summary) -> dict:
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": summary.finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": summary.finish_reason, "logprobs": None}
        return {"id": new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion" if chat else "text_completion",
                "created": now(), "model": name, "system_fingerprint": None, "choices": [choice],
                "usage": summary.usage()}

    async def _sse(job: Job, body, chat: bool, first: Started) -> AsyncIterator[str]:
        """OpenAI's chunk stream; closing it (client gone, shutdown) cancels the job."""
        rid, created_at = new_id("chatcmpl" if chat else "cmpl"), now()
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> str:
            if chat:
                delta = ({"role": "assistant", "content": ""} if role else
                         {} if text is None else {"content": text})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return _data({"id": rid, "object": obj, "created": created_at, "model": name,
                          "system_fingerprint": None, "choices": [choice]})

        waiter = _Waiter(job)  # no request to watch: starlette cancels this generator on disconnect
        try:
            if chat:
                yield chunk(None, role=True)
            while True:
                try:
                    event = await waiter.next()
                except Gone:
                    yield _data(error_body(f"request timed out after {timeout:g} s", "timeout", code="timeout"))
                    break
                if isinstance(event, Piece):
                    yield chunk(event.text)
                elif isinstance(event, Failed):
                    yield _data(json.loads(_failure_response(event).body))
                    break
                elif isinstance(event, Done):
                    yield chunk(None, event.summary.finish_reason)
                    if body.stream_options and body.stream_options.include_usage:
                        yield _data({"id": rid, "object": obj, "created": created_at, "model": name,
                                     "system_fingerprint": None, "choices": [], "usage": event.summary.usage()})
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel("cancelled")  # no-op once finished

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest) -> Response:
        return await _generate(request, body, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await _generate(request, body, chat=False)

    def _model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "speckv"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        if model_id != name:
            return error(404, f"the model `{model_id}` does not exist", param="model", code="model_not_found")
        return JSONResponse(_model_card())

    @app.get("/health")
    async def health() -> Response:
        state = {"status": "draining" if app.state.draining else "ok", "model": name,
                 "busy": worker.busy, "queue_depth": worker.depth, "queue_capacity": worker.capacity}
        return JSONResponse(state, status_code=503 if app.state.draining else 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
