"""The draft's int8 LM head: close to the float head, lossless drafting, applied where load_draft says."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from conftest import CharTokenizer, greedy_runs_of_the_target
from speckv.api import Decoder
from speckv.backends.hf import TorchRunner
from speckv.errors import SpeckvError
from speckv.models import int8_head
from speckv.models.draft import cheap_head
from speckv.models.int8_head import Int8Head, quantize_head
from speckv.models.load import LoadedModel
from speckv.models.reduced_head import reduce_head

pytestmark = pytest.mark.skipif(not int8_head.available(), reason="this torch has no CPU int8 matmul")


@pytest.fixture(autouse=True)
def int8_is_fast(monkeypatch):
    """Where the head applies is decided by timing (models/cpu_kernels.py); these tests pin it to
    fast, so they check the head on every CPU that has the op (test_cpu_kernels.py checks the timing)."""
    from speckv.models import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "int8_pays", lambda: True)


def loaded(model, level="fp32", name="tiny-draft") -> LoadedModel:
    return LoadedModel(name, Path("."), model, CharTokenizer(), level)


@pytest.mark.parametrize("bias", [False, True])
def test_int8_logits_follow_the_float_heads(bias):
    """Per-row int8 weights and per-row int8 hidden states: logits within a few percent of the
    float head's range, the same argmax on nearly every row, the caller's dtype and shape."""
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(64, 500, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(500, 64, generator=gen))
    q = Int8Head(head)
    hidden = torch.randn(2, 50, 64, generator=gen)
    want, got = head(hidden), q(hidden)
    assert got.shape == want.shape and got.dtype == hidden.dtype
    assert (got - want).abs().max() < 0.03 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95
    assert q(hidden.bfloat16()).dtype == torch.bfloat16
    assert tuple(q.weight.shape) == (500, 64) and q.weight.dtype == torch.int8


def test_a_broken_scale_is_caught():
    """The comparison above can fail: an int8 head without its per-row scales is far off."""
    head = torch.nn.Linear(64, 500, bias=False)
    with torch.no_grad():
        head.weight.mul_(7.0)
    q = Int8Head(head)
    q.scale.fill_(1.0)
    hidden = torch.randn(50, 64)
    assert (q(hidden) - head(hidden)).abs().max() > 0.03 * head(hidden).abs().max()


def test_greedy_with_an_int8_draft_head_is_the_targets_output(tiny_pair):
    """float32 target: the draft proposes through its int8 head; output equals the target alone."""
    target, draft = tiny_pair
    small = quantize_head(loaded(copy.deepcopy(draft)))
    assert isinstance(small.model.get_output_embeddings(), Int8Head) and TorchRunner(small.model).vocab == 64
    dec = Decoder(loaded(target, name="tiny-target"), small, "fixed:4")
    assert sum(s.accepted for run in greedy_runs_of_the_target(dec) for s in run.steps) > 0


def test_load_draft_gives_cpu_drafts_an_int8_head_except_exact_and_reduced_ones(tiny_pair, monkeypatch):
    from speckv.data import token_freq

    monkeypatch.setattr(token_freq, "token_ranking", lambda tokenizer: list(range(64)))
    _, draft = tiny_pair
    for level, want in (("bf16", Int8Head), ("nf4", Int8Head), ("fp32", torch.nn.Linear)):
        got = cheap_head(loaded(copy.deepcopy(draft), level)).model.get_output_embeddings()
        assert type(got) is want, level
    reduced = cheap_head(loaded(copy.deepcopy(draft), "bf16"), vocab=16).model
    assert type(reduced).__name__ == "ReducedHead"
    with pytest.raises(SpeckvError, match="needs a float LM head"):  # an int8 head cannot be reduced
        reduce_head(quantize_head(loaded(copy.deepcopy(draft))), 16, range(64))
