"""The short-query attention (backends/attention.py) computes what transformers' sdpa computes."""

import pytest
import torch
from transformers import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from speckv.backends import attention
from speckv.backends.hf import TorchRunner

from conftest import tiny_model


class _Module(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _inputs(n: int, length: int, heads: int = 6, kv_heads: int = 2, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, dim, generator=g)
    k = torch.randn(1, kv_heads, length, dim, generator=g)
    v = torch.randn(1, kv_heads, length, dim, generator=g)
    return q, k, v


def _masks(n: int, length: int):
    causal = torch.ones(n, length, dtype=torch.bool).tril(length - n)
    tree = causal.clone()
    if n > 2:
        tree[2, length - n + 1] = False  # a node that does not see its left neighbour (a tree mask)
    additive = torch.zeros(n, length).masked_fill(~tree, float("-inf"))
    return {"none": None, "bool": causal[None, None], "tree": tree[None, None], "float": additive[None, None]}


@pytest.mark.parametrize("n", [1, 2, 5, 15])
@pytest.mark.parametrize("kind", ["none", "bool", "tree", "float"])
def test_equals_sdpa(n, kind):
    q, k, v = _inputs(n, 40)
    mask = _masks(n, 40)[kind]
    module = _Module(3)
    ours, _ = attention.short_query_attention(module, q, k, v, mask, scaling=0.25)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert ours.shape == ref.shape == (1, n, 6, 16)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_a_wrong_head_grouping_is_caught():
    """The check above can fail: heads paired with key/value heads round-robin (tile instead of
    repeat_kv's consecutive groups) give other numbers."""
    q, k, v = _inputs(3, 40)
    module = _Module(3)
    ref, _ = sdpa_attention_forward(module, q, k, v, None)
    wrong_q = q.view(1, 3, 2, 3, 16).transpose(1, 2).reshape(1, 6, 3, 16)  # head h -> kv head h % 2
    out, _ = attention.short_query_attention(module, wrong_q, k, v, None)
    out = out.view(1, 3, 2, 3, 16).transpose(2, 3).reshape(1, 3, 6, 16)  # undo the permutation of heads
    assert not torch.allclose(out, ref, atol=1e-3)


def test_long_queries_go_to_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape[2]) or (None, None))
    module = _Module(3)
    for n in (1, attention.SHORT_QUERY - 1, attention.SHORT_QUERY, 300):
        q, k, v = _inputs(n, 400)
        attention.short_query_attention(module, q, k, v, _masks(n, 400)["bool"] if n > 1 else None)
    q, k, v = _inputs(3, 3)
    attention.short_query_attention(module, q, k, v, None)  # a short first prompt: sdpa's causal rule
    assert calls == [attention.SHORT_QUERY, 300, 3]


@torch.inference_mode()
def test_runner_switches_sdpa_models_and_logits_stay():
    model = tiny_model(0, vocab=300, hidden=64, context=512)
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(1))

    def steps():  # a prompt, then one-token forwards (the short-query path)
        cache = DynamicCache(config=model.config)
        out = [model(ids[:, :30], cache=cache).logits[:, -1]]
        out += [model(ids[:, i:i + 1], cache=cache).logits[:, -1] for i in range(30, 40)]
        return torch.cat(out)

    assert model.config._attn_implementation == "sdpa"
    before = steps()
    TorchRunner(model)
    assert model.config._attn_implementation == attention.NAME
    torch.testing.assert_close(steps(), before, atol=1e-5, rtol=1e-5)
    with attention.stock(model):
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == attention.NAME


def test_runner_leaves_other_attention_alone():
    model = tiny_model(0, vocab=300, hidden=64, context=512)
    model.set_attn_implementation("eager")
    TorchRunner(model)
    assert model.config._attn_implementation == "eager"
