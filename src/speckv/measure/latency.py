"""What one forward costs on this machine: the raw material of every speed decision."""

from __future__ import annotations

import statistics
import time

import torch

from speckv.backends import Runner, as_runner, sync_for


@torch.inference_mode()
def forward_ms(model: Runner, context: int = 300, new_tokens: tuple[int, ...] = (1, 8), repeats: int = 5) -> dict[int, float]:
    """Median milliseconds of one cached forward over n new tokens after a `context`-token prefix
    (random ids: cost does not depend on which tokens)."""
    model = as_runner(model)
    sync = sync_for(model.device)
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.vocab, 32000)  # ids every tokenizer has
    cache = model.sequence()
    try:
        cache.forward(torch.randint(0, vocab, (context,), generator=gen).tolist(), 1, vocab)
        out = {}
        for n in new_tokens:
            step = torch.randint(0, vocab, (n,), generator=gen).tolist()
            times = []
            for _ in range(repeats + 1):  # the first run warms up
                sync()
                t0 = time.perf_counter()
                cache.forward(step, n, vocab)
                sync()
                times.append((time.perf_counter() - t0) * 1000)
                cache.truncate(context)
            out[n] = statistics.median(times[1:])
        return out
    finally:
        cache.close()
