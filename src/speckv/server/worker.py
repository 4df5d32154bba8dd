"""One worker thread runs every generation; requests wait for it in a bounded queue.

Why one: speculative decoding here is batch size 1 and a loaded pair saturates the CPU (or GPU
stream) by itself; running two generations at once would only slow both.

Invariants:
- Only the worker thread touches the Decoder (tokenizer, controllers, model forwards).
- The queue holds waiting jobs only (the running one has left it); `submit` never blocks and
  raises `QueueFull` when `capacity` jobs already wait.
- A job's events arrive in order: `Started` then `Piece`* then exactly one of `Done` / `Failed`,
  or a single `Failed` when it fails (bad input) or is cancelled before it starts.
- Cancellation (client gone, deadline passed, shutdown) is a flag the worker reads between engine
  steps; the first reason given wins, and a finished job ignores it. The worker also enforces the
  job's deadline itself, so a job nobody listens to any more still stops.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from speckv.errors import SpeckvError
from speckv.server.generation import DecoderBackend, Summary
from speckv.server.metrics import Metrics
from speckv.server.protocol import ChatRequest, CompletionRequest

log = logging.getLogger("speckv.server")


class QueueFull(Exception):
    """No room in the wait queue: the caller answers 429."""


@dataclass
class Started:
    prompt_tokens: int


@dataclass
class Piece:
    text: str


@dataclass
class Done:
    summary: Summary


@dataclass
class Failed:
    error: Exception
    reason: str = "error"  # "invalid" (bad input), "error" (a bug), "cancelled", "timeout", "shutdown"


@dataclass
class Job:
    request: ChatRequest | CompletionRequest
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() by which the job must be finished
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.monotonic)
    reason: str | None = None  # why it was cancelled
    finished: bool = False
    _flag: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._flag.is_set() and not self.finished:
            self.reason = reason
            self._flag.set()

    @property
    def cancelled(self) -> bool:
        if not self._flag.is_set() and time.monotonic() > self.deadline:
            self.cancel("timeout")
        return self._flag.is_set()

    def emit(self, event) -> None:
        """Hand an event to the request's event loop (thread-safe; dropped if that loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            pass


class Worker:
    """The single generation thread and its bounded wait queue."""

    def __init__(self, backend: DecoderBackend, capacity: int, metrics: Metrics):
        if capacity < 1:
            raise SpeckvError(f"queue size must be at least 1 (got {capacity})")
        self.backend = backend
        self.capacity = capacity
        self.metrics = metrics
        self._queue: queue.Queue[Job | None] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._loop, name="speckv-worker", daemon=True)
        self.current: Job | None = None
        self._mean_s = 5.0  # moving average of a generation's wall time, for Retry-After
        metrics.queue_depth.set_function(self._queue.qsize)
        metrics.queue_capacity.set(capacity)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        return self.current is not None

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: when the running generation ends, on average."""
        return max(1, min(300, round(self._mean_s)))

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    def stop(self, timeout: float = 3.0) -> None:
        """Cancel the running and waiting jobs and end the thread (the current step finishes)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel("shutdown")
                self._finish(job, Failed(SpeckvError("server shutting down"), "shutdown"))
        if self.current is not None:
            self.current.cancel("shutdown")
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:  # a late submit took the slot: the daemon thread dies with the process
                return
            self._thread.join(timeout)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            self.current = job
            self.metrics.busy.set(1)
            try:
                self._run(job)
            except Exception as exc:  # a bug, not bad input: report it and keep serving
                log.exception("generation failed")
                self._finish(job, Failed(exc))
            finally:
                self.current = None
                self.metrics.busy.set(0)

    def _finish(self, job: Job, event: Done | Failed, summary: Summary | None = None) -> None:
        job.finished = True
        outcome = "completed" if isinstance(event, Done) else event.reason
        controller = summary.controller if summary else self.backend.default_controller
        self.metrics.generation_finished(outcome, controller, summary)
        job.emit(event)

    def _run(self, job: Job) -> None:
        queue_s = time.monotonic() - job.submitted
        self.metrics.queue_wait.observe(queue_s)
        if job.cancelled:
            self._finish(job, Failed(SpeckvError(f"request {job.reason} before it started"), job.reason))
            return
        try:
            gen = self.backend.start(job.request)
        except SpeckvError as exc:
            self._finish(job, Failed(exc, "invalid"))
            return
        job.emit(Started(gen.prompt_tokens))
        try:
            pieces = iter(gen)
            while not (stopped := job.cancelled):  # checked between engine steps
                piece = next(pieces, None)
                if piece is None:
                    break
                if piece:
                    job.emit(Piece(piece))
        except SpeckvError as exc:  # input the Decoder refused once running
            self._finish(job, Failed(exc, "invalid"))
            return
        finally:
            gen.close()
        summary = gen.summary(queue_s)
        if stopped:
            self._finish(job, Failed(SpeckvError(f"generation stopped: {job.reason}"), job.reason), summary)
            return
        self._mean_s = 0.8 * self._mean_s + 0.2 * summary.stats.wall_s
        self._finish(job, Done(summary), summary)
