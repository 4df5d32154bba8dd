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


def beam_parents(nodes: int, width: int, root: int) -> list[int]:
    """Cache-index parents of a beam tree of `nodes` entries, `width` per level, appended after
    entry `root`: node i of a level hangs under node i of the level above (the shape verification
    pays for, whatever the tokens)."""
    parents = []
    for i in range(nodes):
        parents.append(root if i < width else root + 1 + i - width)
    return parents


@torch.inference_mode()
def tree_ms(model: Runner, context: int = 300, nodes: tuple[int, ...] = (1, 8), width: int = 4,
            repeats: int = 5) -> dict[str, dict[int, float]]:
    """Median ms of (a) verifying a tree of n nodes as the engine does (the root and n nodes in one
    forward under a tree mask, n + 1 rows of logits) and (b) one draft level: a frontier of n
    nodes under a level already in the cache. Backends without tree masks get the plain n + 1-token
    forward (what a tree of n nodes costs there at least)."""
    model = as_runner(model)
    sync = sync_for(model.device)
    trees = getattr(model, "trees", False)
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.vocab, 32000)
    cache = model.sequence()
    ids = lambda n: torch.randint(0, vocab, (n,), generator=gen).tolist()  # noqa: E731

    def timed(call) -> float:
        times = []
        for _ in range(repeats + 1):
            sync()
            t0 = time.perf_counter()
            call()
            sync()
            times.append((time.perf_counter() - t0) * 1000)
            cache.truncate(context)
        return statistics.median(times[1:])

    try:
        cache.forward(ids(context), 1, vocab)
        verify, level = {}, {}
        for n in nodes:
            toks = ids(n + 1)
            parents = [None] + beam_parents(n, width, context) if trees else None
            verify[n] = timed(lambda: cache.forward(toks, n + 1, vocab, parents) if trees else cache.forward(toks, n + 1, vocab))
            if trees:
                first = ids(n)

                def one_level():
                    cache.forward(first, n, vocab, [context - 1] * n)
                    sync()
                    t = time.perf_counter()
                    cache.forward(ids(n), n, vocab, list(range(context, context + n)))
                    return t
                times = []
                for _ in range(repeats + 1):
                    t0 = one_level()
                    sync()
                    times.append((time.perf_counter() - t0) * 1000)
                    cache.truncate(context)
                level[n] = statistics.median(times[1:])
        return {"verify": verify, "level": level}
    finally:
        cache.close()
