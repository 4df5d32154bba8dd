"""What one forward costs on this machine: the raw material of every speed decision."""

from __future__ import annotations

import statistics
import time

import torch
from transformers import DynamicCache

from speckv.engine.kv import crop_to


@torch.inference_mode()
def forward_ms(model: torch.nn.Module, context: int = 300, new_tokens: tuple[int, ...] = (1, 8), repeats: int = 5) -> dict[int, float]:
    """Median milliseconds of one cached forward over n new tokens after a `context`-token prefix."""
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (1, context), generator=gen).to(model.device)
    cache = DynamicCache(config=model.config)
    model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1)
    out = {}
    for n in new_tokens:
        step = torch.randint(0, vocab, (1, n), generator=gen).to(model.device)
        times = []
        for _ in range(repeats + 1):  # the first run warms up
            sync()
            t0 = time.perf_counter()
            model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=n)
            sync()
            times.append((time.perf_counter() - t0) * 1000)
            crop_to(cache, context)
        out[n] = statistics.median(times[1:])
    return out
