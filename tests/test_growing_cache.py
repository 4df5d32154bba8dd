"""The in-place KV layer (backends/growing_cache.py) holds what transformers' DynamicLayer holds."""

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from speckv.backends import growing_cache as gc

from conftest import tiny_model


def _pair():
    return DynamicLayer(), gc.GrowingLayer()


def _kv(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 3, generator=g)  # values may be narrower


def _same(a, b):
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_appends_crops_and_assignments_match_dynamic_layer():
    plain, grow = _pair()
    seed = 0
    for step in range(80):  # long enough to outgrow a first buffer (SPARE) more than once
        n = 1 + step % 16 if step else gc.SPARE - 3
        k, v = _kv(n, seed := seed + 1)
        out_plain, out_grow = plain.update(k, v), grow.update(k, v)
        assert all(torch.equal(x, y) for x, y in zip(out_plain, out_grow))
        _same(plain, grow)
        if step % 3 == 0:  # a rollback
            plain.crop(-2), grow.crop(-2)
        if step % 7 == 5:  # someone assigns (a tree path kept by index_select)
            keep = torch.tensor([i for i in range(plain.get_seq_length()) if i % 50 != 7])
            for layer in (plain, grow):
                layer.keys, layer.values = layer.keys.index_select(-2, keep), layer.values.index_select(-2, keep)
        _same(plain, grow)
    assert grow.get_seq_length() == plain.get_seq_length() > 2 * gc.SPARE  # past the first buffer (room for 2 x its first entries)


def test_a_layer_that_ignored_assignments_is_caught():
    """The check above can fail: a layer that keeps writing into its buffer after `keys` was
    replaced (no adoption) loses the assignment."""

    class Stale(gc.GrowingLayer):
        def _in_buffer(self):
            return self._keys_buffer is not None

    plain, stale = DynamicLayer(), Stale()
    for layer in (plain, stale):
        layer.update(*_kv(10, 1))
        keep = torch.tensor([0, 2, 4])
        layer.keys, layer.values = layer.keys.index_select(-2, keep), layer.values.index_select(-2, keep)
        layer.update(*_kv(2, 2))
    assert not torch.equal(plain.keys, stale.keys)


@torch.inference_mode()
def test_model_logits_unchanged():
    model = tiny_model(0, vocab=300, hidden=64, context=1024)
    config = model.config
    ids = torch.randint(0, 300, (1, 400), generator=torch.Generator().manual_seed(1))

    def run(cache):
        out = [model(ids[:, :100], cache=cache).logits[:, -1]]
        for i in range(100, 400, 3):
            out.append(model(ids[:, i:i + 3], cache=cache).logits[:, -1])
            cache.crop(-1)  # drop one entry of every three (a rejected draft)
            out.append(model(ids[:, i + 2:i + 3], cache=cache).logits[:, -1])
        return torch.cat(out)

    cache = gc.growing_cache(config)
    assert all(type(layer) is gc.GrowingLayer for layer in cache.layers)
    torch.testing.assert_close(run(cache), run(DynamicCache(config=config)), atol=1e-5, rtol=1e-5)
