"""Attention for short queries on the torch backend: one name ("speckv_sdpa") that transformers'
models accept, equal to its sdpa except where a forward brings fewer than SHORT_QUERY tokens.

Why: torch's CPU flash-attention kernel is built for long queries. For one query token over a
700-token cache in bf16 it takes 0.72 ms per layer where two small matmuls take 0.11 (1,500
tokens: 1.58 against 0.19), and speculative decoding is made of such forwards: every draft token
and every plain target step is one query. On the 0.5B draft at 700 tokens of context that is a
third of a draft forward. Queries of SHORT_QUERY tokens or more (a tree's verification, a prompt) go
to sdpa unchanged: there the kernel is as fast as the matmuls.

Invariant: the same numbers as sdpa's up to rounding. Scores, softmax and the weighted sum run in
float32 (as the kernel accumulates), so a bf16 model loses nothing against sdpa (max error over
float32 attention equal to sdpa's); masks mean what they mean to sdpa (bool: True attends;
float: added to the scores; none with one query: every entry; none with more: sdpa decides).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "speckv_sdpa"
#: queries shorter than this skip the kernel (measured, bf16: at 9 tokens the matmuls still win at
#: long contexts, 0.63 against 0.87 ms per layer over 1,500 entries; at 17 the two are equal)
SHORT_QUERY = 16


def short_query_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (B, H, n, D), key/value (B, KV, L, D); returns
    (B, n, H, D). Heads share key/value heads in consecutive groups (as repeat_kv lays them out)."""
    batch, heads, n, dim = query.shape
    if (n >= SHORT_QUERY or (attention_mask is None and n > 1)  # (the latter: a short prompt, transformers' causal rule)
            or dropout or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.reshape(batch, kv_heads, group * n, dim).float()
    scores = torch.matmul(q, key.float().transpose(-1, -2)).mul_(scale).view(batch, kv_heads, group, n, length)
    if attention_mask is not None:
        mask = attention_mask[:, :, None]  # (B, 1, 1, n, L): one mask for every head
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1).view(batch, kv_heads, group * n, length)
    out = torch.matmul(probs, value.float()).to(query.dtype).view(batch, heads, n, dim)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make NAME known to transformers (idempotent); its masks are sdpa's."""
    AttentionInterface.register(NAME, short_query_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


@contextmanager
def stock(module: torch.nn.Module) -> Iterator[None]:
    """Run `module` with transformers' own sdpa for a while (a baseline timed as its library ships)."""
    base = getattr(module, "base", module)
    before = getattr(module.config, "_attn_implementation", None)
    if before != NAME:
        yield
        return
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        base.set_attn_implementation(NAME)
