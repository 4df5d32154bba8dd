"""Reduced-vocabulary draft head: exact logits on the kept ids, lossless drafting, token ranking."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHARS, CharTokenizer, greedy_runs_of_the_target, tiny_model
from speckv.api import Decoder
from speckv.control import make_controller
from speckv.data import token_freq
from speckv.drafting.chain import ChainSource
from speckv.engine import SamplingConfig
from speckv.backends.hf import TorchRunner
from speckv.errors import SpeckvError
from speckv.models.load import LoadedModel
from speckv.models.reduced_head import MASKED, ReducedHead, check_draft_vocab, kept_ids, reduce_head
from test_sampling import check_sampler


def loaded(model, name="tiny-draft") -> LoadedModel:
    return LoadedModel(name, Path("."), model, CharTokenizer(), "fp32")


@pytest.mark.parametrize("bias", [False, True])
def test_logits_equal_the_full_models_on_kept_ids_and_masked_elsewhere(bias):
    """Prefill, then one token at a time, then two: the same rows as the full model's, over a cache each."""
    full = tiny_model(3, temperature=4.0)
    if bias:  # Qwen's head has none; a biased head must keep its kept rows' bias
        head = torch.nn.Linear(32, 64, bias=True)
        with torch.no_grad():
            head.weight.copy_(full.lm_head.weight)
            head.bias.normal_()
        full.lm_head = head
    kept = torch.tensor(sorted(torch.randperm(64, generator=torch.Generator().manual_seed(0))[:16].tolist()))
    reduced = ReducedHead(full, kept)
    outside = torch.ones(64, dtype=torch.bool)
    outside[kept] = False
    assert TorchRunner(reduced).vocab == 64 and reduced.config is full.config and reduced.device == full.device
    caches = TorchRunner(full).sequence(), TorchRunner(reduced).sequence()
    checked_outside = 0
    with torch.no_grad():
        for tokens, rows in (([1, 5, 9, 2, 40, 33, 7], 3), ([11], 1), ([12], 1), ([63, 0], 2)):
            want = caches[0].forward(tokens, rows, 64)
            got = caches[1].forward(tokens, rows, 64)
            assert got.shape == want.shape == (rows, 64) and got.dtype == torch.float32
            torch.testing.assert_close(got[:, kept], want[:, kept], rtol=1e-5, atol=1e-5)
            assert (got[:, outside] == MASKED).all()
            assert (got.argmax(-1) == kept[want[:, kept].argmax(-1)]).all()
            checked_outside += int((want.argmax(-1) != got.argmax(-1)).sum())
            assert len(caches[0]) == len(caches[1])
    assert checked_outside > 0  # some full argmax fell outside the kept ids: the restriction mattered


def test_kept_ids_take_the_top_n_plus_the_special_tokens():
    assert kept_ids([5, 3, 99, 3, 1, 0], 3, 10, always=[7]).tolist() == [1, 3, 5, 7]
    assert kept_ids([2, 1], 5, 10).tolist() == [1, 2]


def test_special_tokens_are_always_kept():
    model = tiny_model(1)
    model.generation_config.eos_token_id = [60, 61]
    tok = CharTokenizer()
    tok.all_special_ids = [62]
    draft = reduce_head(LoadedModel("d", Path("."), model, tok, "fp32"), 2, np.arange(64))
    assert draft.model.kept.tolist() == [0, 1, 60, 61, 62]
    assert (draft.name, draft.compression, draft.tokenizer) == ("d", "fp32", tok)
    again = reduce_head(draft, 3, np.arange(64))  # starts from the full head again
    assert again.model.base is model and again.model.kept.tolist() == [0, 1, 2, 60, 61, 62]


def test_greedy_with_a_reduced_draft_is_the_targets_output(tiny_pair):
    """float32: keep 16 of 64 ids; the Decoder's output equals the target alone, token for token."""
    target, draft = tiny_pair
    ranking = np.random.default_rng(0).permutation(64)
    reduced = reduce_head(loaded(draft), 16, ranking)
    dec = Decoder(loaded(target, "tiny-target"), reduced, "fixed:4")
    steps = [s for run in greedy_runs_of_the_target(dec) for s in run.steps]
    assert all(math.isfinite(t.entropy) for s in steps for t in s.signals)
    assert sum(s.accepted for s in steps) > 0  # the reduced draft did get tokens accepted


def test_speculative_sampling_with_a_reduced_draft_is_exact():
    """A draft that can propose 3 of 8 ids: two-token draws still follow the target's distribution,
    and the same test rejects a broken acceptance rule with this draft."""
    target = tiny_model(0, vocab=8, layers=1, hidden=16, temperature=4.0)
    draft = ReducedHead(tiny_model(1, vocab=8, layers=1, hidden=16, temperature=4.0), torch.tensor([0, 3, 5]))
    check_sampler(target, ChainSource(draft), [1, 2, 3], 8_000, 1_000)


def test_a_sampled_reduced_draft_proposes_kept_ids_only():
    draft = ReducedHead(tiny_model(1, vocab=8, layers=1, hidden=16), torch.tensor([0, 3, 5]))
    with torch.no_grad():
        logits = TorchRunner(draft).sequence().forward([1, 2, 3], 1, 8)
    q = SamplingConfig(True, temperature=0.5, top_p=0.99).probs(logits)[0]
    assert set(q.nonzero().flatten().tolist()) <= {0, 3, 5} and math.isclose(float(q.sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("n,message", [(0, "at least 1"), (65, r"larger than the model's \(64\)"), (2.5, "whole number"),
                                       (True, "whole number"), ("8", "whole number"), (-3, "at least 1")])
def test_bad_draft_vocabulary_is_refused(n, message):
    with pytest.raises(SpeckvError, match=message):
        reduce_head(loaded(tiny_model(1)), n, np.arange(64))


def test_check_draft_vocab_reads_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 100}))
    check_draft_vocab(100, tmp_path)
    check_draft_vocab(1, tmp_path)
    for n in (101, 0):
        with pytest.raises(SpeckvError, match="draft vocabulary"):
            check_draft_vocab(n, tmp_path)
    with pytest.raises(SpeckvError, match="cannot read"):
        check_draft_vocab(10, tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpeckvError, match="no vocab_size"):
        check_draft_vocab(10, tmp_path)


class AnyCharTokenizer(CharTokenizer):
    """CharTokenizer that maps characters outside its 64 to the last id (so any corpus tokenizes)."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [CHARS.find(c) % len(CHARS) for c in text]}


def test_count_ranking_is_by_frequency_then_id():
    tok = CharTokenizer()
    counts = token_freq.token_counts(tok, ["ccc b", "ccb"])
    ranking = token_freq.rank(counts)
    assert [CHARS[i] for i in ranking[:4]] == ["c", "b", " ", "a"]  # then unseen ids in id order
    assert sorted(ranking.tolist()) == list(range(64))


def test_token_ranking_is_counted_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECKV_HOME", str(tmp_path))
    monkeypatch.setattr(token_freq, "corpus", lambda: iter(["zzz yy x", "é" * 3]))
    tok = AnyCharTokenizer()
    first = token_freq.token_ranking(tok)
    assert [CHARS[i] for i in first[:4]] == ["z", "\n", "y", " "]  # "é" -> id 63 ("\n"): 3 as z; ties by id
    files = list((tmp_path / "token_ranking").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"

    def must_not_count(*_):
        raise AssertionError("counted again")

    monkeypatch.setattr(token_freq, "token_counts", must_not_count)
    assert (token_freq.token_ranking(tok) == first).all()
    assert token_freq.read_ranking(files[0], "another vocabulary") is None  # refused for another tokenizer
    files[0].write_bytes(b"not a zip")  # damaged: counted again
    with pytest.raises(AssertionError, match="counted again"):
        token_freq.token_ranking(tok)


@pytest.mark.qwen
def test_shipped_qwen_ranking_loads_and_is_a_permutation():
    from transformers import AutoTokenizer

    from speckv.data.bundled import bundled
    from speckv.models.provision import model_path
    from speckv.models.registry import DEFAULT_DRAFT

    tok = AutoTokenizer.from_pretrained(model_path(DEFAULT_DRAFT))
    key = token_freq.vocab_hash(tok)
    shipped = token_freq.read_ranking(bundled(token_freq.SHIPPED), key)
    assert shipped is not None
    assert (np.sort(shipped) == np.arange(token_freq.vocab_count(tok))).all()
    assert (token_freq.token_ranking(tok) == shipped).all()
    top = set(shipped[:1000].tolist())
    assert {tok.convert_tokens_to_ids(t) for t in ("Ġreturn", "Ġthe", "Ġself")} <= top
