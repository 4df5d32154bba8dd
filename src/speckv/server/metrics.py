"""Prometheus metrics for one server: traffic, generations, speculation, the queue.

Invariants:
- Each app owns its own registry (several apps in one process, as in tests, never collide).
- Counters only grow; tokens per second over any window is
  rate(speckv_generated_tokens_total) / rate(speckv_generation_seconds_sum), and the mean accepted
  draft tokens per step is speckv_accepted_tokens_total / speckv_steps_total.
- The `controller` label is the controller's name (e.g. fixed:4, auto), a short bounded set.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from speckv import __version__

TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
ACCEPT_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, info: dict[str, str]):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("speckv_requests", "HTTP requests by route and status code",
                                ["route", "code"], registry=r)
        self.request_seconds = Histogram("speckv_request_duration_seconds",
                                         "HTTP request time, to the last byte (streams included)",
                                         ["route"], buckets=TIME_BUCKETS, registry=r)
        self.generations = Counter("speckv_generations",
                                   "generations by outcome: completed, cancelled (client gone), timeout, "
                                   "shutdown, invalid (bad input found by the worker), error",
                                   ["controller", "outcome"], registry=r)
        self.tokens = Counter("speckv_generated_tokens", "tokens generated (cancelled runs included)",
                              ["controller"], registry=r)
        self.prompt_tokens = Counter("speckv_prompt_tokens", "prompt tokens processed", registry=r)
        self.generation_seconds = Histogram("speckv_generation_seconds", "wall time of one generation",
                                            ["controller"], buckets=TIME_BUCKETS, registry=r)
        self.last_tokens_per_s = Gauge("speckv_last_tokens_per_second",
                                       "tokens per second of the last finished generation", registry=r)
        self.steps = Counter("speckv_steps", "speculation steps (one target forward each)",
                             ["controller"], registry=r)
        self.drafted = Counter("speckv_drafted_tokens", "tokens proposed by the draft", ["controller"], registry=r)
        self.accepted = Counter("speckv_accepted_tokens", "drafted tokens the target accepted",
                                ["controller"], registry=r)
        self.accepted_per_step = Histogram("speckv_accepted_per_step", "drafted tokens accepted per step",
                                           ["controller"], buckets=ACCEPT_BUCKETS, registry=r)
        self.queue_depth = Gauge("speckv_queue_depth", "requests waiting for the worker", registry=r)
        self.queue_capacity = Gauge("speckv_queue_capacity", "most requests that may wait", registry=r)
        self.queue_wait = Histogram("speckv_queue_wait_seconds", "time a request waited for the worker",
                                    buckets=TIME_BUCKETS, registry=r)
        self.busy = Gauge("speckv_worker_busy", "1 while a generation runs", registry=r)
        Info("speckv_server", "served model pair and default controller", registry=r).info(
            {"version": __version__, **info})

    def generation_finished(self, outcome: str, controller: str, summary=None) -> None:
        """Record one generation (summary: a generation.Summary, None if it never started)."""
        self.generations.labels(controller, outcome).inc()
        if summary is None:
            return
        stats = summary.stats
        self.tokens.labels(controller).inc(summary.completion_tokens)
        self.prompt_tokens.inc(summary.prompt_tokens)
        self.generation_seconds.labels(controller).observe(stats.wall_s)
        self.last_tokens_per_s.set(stats.tokens_per_s)
        self.steps.labels(controller).inc(len(summary.steps))
        self.drafted.labels(controller).inc(sum(s.drafted for s in summary.steps))
        self.accepted.labels(controller).inc(sum(s.accepted for s in summary.steps))
        per_step = self.accepted_per_step.labels(controller)
        for s in summary.steps:
            per_step.observe(s.accepted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
