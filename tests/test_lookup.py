"""Prompt lookup drafting: what it proposes, and that it is lossless (greedy and sampled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_decoder, tiny_model
from speckv.control import make_controller
from speckv.drafting.lookup import LookupSource
from speckv.engine import Engine, SamplingConfig, Verdict
from speckv.errors import SpeckvError
from test_sampling import accept_always, chi2_p, pair_distribution, sample_pairs


def propose(ids, budget, n_max=3, n_min=1):
    drafter = LookupSource(n_max, n_min).new(64, lambda: None)
    return drafter.propose(list(ids), budget, make_controller(f"fixed:{budget}"), SamplingConfig(), None, frozenset())


def test_copies_after_the_first_occurrence_of_the_longest_ngram():
    draft = propose([5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2], 3)  # "1 2" seen twice: copy after the first
    assert draft.tokens == [3, 9, 1]
    first, second = draft.signals[:2]
    assert first.match_len == 2 and first.top1 == pytest.approx(0.5) and first.margin == pytest.approx(0.0)
    assert first.entropy == pytest.approx(np.log(2))  # followed once by 3, once by 4
    assert second.top1 == 1.0 and second.entropy == pytest.approx(0.0)  # only the copied occurrence agrees
    draft = propose([1, 2, 3, 8, 2, 3, 9, 0, 1, 2, 3], 2)  # "1 2 3" beats the commoner "2 3"
    assert draft.tokens == [8, 2] and draft.signals[0].match_len == 3
    # match_len says how far back the copy point agrees, past the n-gram found ("4 5 6 1 2 3": 6)
    draft = propose([4, 5, 6, 1, 2, 3, 8, 0, 4, 5, 6, 1, 2, 3], 2)
    assert draft.tokens == [8, 0] and {s.match_len for s in draft.signals} == {6}
    assert propose([4, 5, 6, 1, 2, 3, 8, 0, 4, 5, 6, 1, 2, 3], 2, n_max=1).signals[0].match_len == 6
    assert propose([1, 2, 3, 4], 4).tokens == []  # nothing recurs: nothing proposed
    assert propose([7, 7], 3, n_max=3, n_min=2).tokens == []  # no 2-gram recurs
    assert propose([7, 7], 3).tokens == [7, 7, 7]  # a copy may run into what it just proposed


@pytest.mark.parametrize("spec", [dict(n_max=0), dict(n_max=2, n_min=3), dict(n_max=17)])
def test_bad_ngram_ranges_are_user_errors(spec):
    with pytest.raises(SpeckvError, match="n-gram"):
        LookupSource(**spec)


def greedy(engine, prompt, controller, n=40):
    events = list(engine.run(prompt, make_controller(controller), SamplingConfig(), n))
    return [t for e in events for t in e.tokens], [e.record for e in events]


@pytest.mark.parametrize("controller", ["fixed:1", "fixed:4", "p-min:8:0.5", "auto"])
def test_greedy_lookup_is_the_targets_greedy_output(tiny_pair, controller):
    """float32: every controller drafting by lookup reproduces the target alone, token for token."""
    target = tiny_pair[0]
    drafted = 0
    for prompt in ([1, 2, 3, 1, 2, 3, 1, 2], [5, 6, 7, 8, 5, 6], [9, 9, 9, 9], [4, 20, 31, 4, 20]):
        want, _ = greedy(Engine(target), prompt, "autoregressive")
        got, records = greedy(Engine(target, LookupSource()), prompt, controller)
        assert got == want
        drafted += sum(r.drafted for r in records)
    assert drafted > 0  # lookup did propose (the tiny target repeats itself)


def test_decoder_with_lookup_needs_no_draft_model(tiny_pair):
    from speckv.api import Decoder

    dec = tiny_decoder(tiny_pair, "fixed:4")
    want = dec.generate("abcabcabc", max_new_tokens=30, controller="autoregressive")
    alone = Decoder(dec.target, None, "fixed:4", drafter="lookup:4")
    got = alone.generate("abcabcabc", max_new_tokens=30)
    assert got.token_ids == want.token_ids and str(alone.drafter) == "lookup:4:1" and alone.setup.draft == "-"
    with pytest.raises(SpeckvError, match="needs a draft model"):
        Decoder(dec.target, None, "fixed:4", drafter="model")


@pytest.mark.parametrize("spec,message", [("nope", "unknown drafter"), ("lookup:x", "not an integer"),
                                          ("lookup:2:3", "n-gram"), ("lookup:1:1:1", "lookup")])
def test_bad_drafter_specs(spec, message):
    from speckv.drafting import parse_drafter

    with pytest.raises(SpeckvError, match=message):
        parse_drafter(spec)


class UniformClaims(LookupSource):
    """Broken: lookup proposals passed on with a made-up uniform draft distribution (instead of
    one-hot), so the acceptance ratio p/q is wrong."""

    def new(self, vocab, sync):
        inner = super().new(vocab, sync)
        propose = inner.propose

        def claimed(*args, **kwargs):
            draft = propose(*args, **kwargs)
            for p in draft.proposals:
                p.probs = torch.full((vocab,), 1.0 / vocab)
            return draft

        inner.propose = claimed
        return inner


def test_sampling_with_lookup_follows_the_target():
    """Two-token draws with a lookup proposal at the first position: exact in distribution; a
    sampler that keeps every draft, or one that prices lookup as uniform, fails the same test."""
    target = tiny_model(0, vocab=8, layers=1, hidden=16, temperature=4.0)
    config = SamplingConfig(True, temperature=0.9)
    prompt = [1, 2, 3, 1, 2]  # lookup proposes 3 after "1 2"
    exact = pair_distribution(target, prompt, config)
    assert chi2_p(sample_pairs(Engine(target, LookupSource()), prompt, config, 12_000), exact) > 0.01
    assert chi2_p(sample_pairs(Engine(target, LookupSource(), acceptance=accept_always), prompt, config, 3_000), exact) < 0.01
    assert chi2_p(sample_pairs(Engine(target, UniformClaims()), prompt, config, 12_000), exact) < 0.01


def test_cli_lookup_generates_the_targets_output_without_a_draft(cli):
    """`--drafter lookup` on SmolLM2 in float32: the target's own greedy tokens, no draft model loaded."""
    import json

    from speckv.models import pull

    pull("smollm2-135m-instruct")
    common = ["generate", "Repeat exactly: one two three, one two three, one two three.", "--target",
              "smollm2-135m-instruct", "--draft", "no-such-model", "--dtype", "float32", "--max-new-tokens", "24", "--json"]
    code, out, err = cli(*common, "--drafter", "lookup", "--controller", "fixed:4")
    assert code == 0, err
    spec = json.loads(out)
    code, out, err = cli(*common, "--controller", "autoregressive")
    assert code == 0, err
    assert spec["token_ids"] == json.loads(out)["token_ids"] and spec["stats"]["mean_accepted"] > 0


@pytest.mark.parametrize("drafter,message", [("nope", "unknown drafter"), ("lookup:0", "n-gram")])
def test_cli_bad_drafter_is_one_line(cli, drafter, message):
    code, _, err = cli("generate", "hi", "--drafter", drafter, "--target", "no-such-model")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bench_runs_transformers_prompt_lookup_beside_ours(cli, tmp_path):
    """bench --drafter lookup with hf-lookup: transformers' prompt lookup is a peer method, and in
    float32 both reproduce the target alone."""
    import json

    code, out, err = cli("bench", "--target", "smollm2-135m-instruct", "--draft", "smollm2-135m-instruct",
                         "--dtype", "float32", "--drafter", "lookup", "--tasks", "code", "--prompts", "1",
                         "--max-new-tokens", "12", "--methods", "autoregressive,fixed:4,hf-lookup,hf-lookup:4,hf-assisted:4",
                         "--out", str(tmp_path / "b.json"))
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for method in ("fixed:4", "hf-lookup", "hf-lookup:4", "hf-assisted:4"):
        assert rows[method].rstrip().endswith("100%"), rows[method]
    assert "lookup:3:1" in out  # the table names the drafter
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["config"]["drafter"] == "lookup:3:1" and saved["config"]["draft"] == "-"
    decode = {row["method"]: row["decode_tokens_per_s"] for row in saved["summary"]}
    assert decode["fixed:4"] > 0 and decode["hf-lookup"] is None  # transformers' generate hides its prompt reading


@pytest.mark.parametrize("method,message", [("hf-lookup:0", "token count"), ("hf-lookup:x", "token count")])
def test_bad_hf_lookup_is_one_line(cli, method, message):
    code, _, err = cli("bench", "--methods", f"autoregressive,{method}", "--target", "no-such-model")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
