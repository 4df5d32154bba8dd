"""Speculative sampling is lossless: chi-square tests against the target's exact distribution.

Each test also runs a deliberately broken sampler through the same test and requires it to fail,
so the test can tell a correct sampler from a wrong one.
"""

import pytest
import torch
from scipy.stats import chisquare

from speckv.control import make_controller
from speckv.drafting.chain import ChainSource
from speckv.engine import Engine, SamplingConfig, Verdict, accept_speculative
from speckv.errors import SpeckvError

from conftest import tiny_model


def accept_always(target_logits, drafted, draft_probs, config, generator):
    """Broken: keeps every draft token, so the output follows the draft, not the target."""
    p = config.probs(target_logits)
    return Verdict(len(drafted), int(torch.multinomial(p[len(drafted)], 1, generator=generator)))


def resample_from_target(target_logits, drafted, draft_probs, config, generator):
    """Broken: on rejection draws from p instead of the residual max(0, p - q)."""
    v = accept_speculative(target_logits, drafted, draft_probs, config, generator)
    if v.accepted < len(drafted):
        p = config.probs(target_logits)
        return Verdict(v.accepted, int(torch.multinomial(p[v.accepted], 1, generator=generator)))
    return v


def chi2_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected >= 5  # pool the sparse cells into one, as chi-square requires
    obs = torch.cat([counts[keep], counts[~keep].sum(0, keepdim=True)])
    exp = torch.cat([expected[keep], expected[~keep].sum(0, keepdim=True)])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    obs, exp = obs.double(), exp.double()
    return float(chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue)


@pytest.fixture(scope="module")
def small_vocab_pair():
    target = tiny_model(0, vocab=8, layers=1, hidden=16, temperature=4.0)
    draft = tiny_model(1, vocab=8, layers=1, hidden=16, temperature=4.0)
    return target, draft


def pair_distribution(model, prompt, config):
    """Exact p(t1, t2 | prompt) under the target's sampling distribution, flattened."""
    with torch.no_grad():
        p1 = config.probs(model(torch.tensor([prompt])).logits[0, -1:].float())[0]
        seqs = torch.tensor([prompt + [a] for a in range(len(p1))])
        p2 = config.probs(model(seqs).logits[:, -1].float())
    return (p1[:, None] * p2).flatten()


def sample_pairs(engine, prompt, config, draws):
    counts = torch.zeros(64)
    for seed in range(draws):
        cfg = SamplingConfig(True, config.temperature, config.top_k, config.top_p, seed)
        tokens = [t for e in engine.run(prompt, make_controller("fixed:1"), cfg, 2) for t in e.tokens]
        counts[tokens[0] * 8 + tokens[1]] += 1
    return counts


def check_sampler(target, source, prompt, draws, broken_draws, config=SamplingConfig(True, temperature=0.9)):
    """The engine with this proposer samples the target's exact two-token distribution, and the
    same test rejects a sampler that keeps every draft (accept_always) with the same proposer."""
    exact = pair_distribution(target, prompt, config)
    good = chi2_p(sample_pairs(Engine(target, source), prompt, config, draws), exact)
    broken = chi2_p(sample_pairs(Engine(target, source, acceptance=accept_always), prompt, config, broken_draws), exact)
    assert good > 0.01, good
    assert broken < 0.01, broken


def test_engine_samples_the_target_distribution(small_vocab_pair):
    """20k two-token draws exercise acceptance, residual resampling and the bonus token."""
    target, draft = small_vocab_pair
    check_sampler(target, ChainSource(draft), [1, 2, 3], 20_000, 4_000)


@pytest.mark.parametrize("broken_rule", [accept_always, resample_from_target])
def test_acceptance_rule_is_exact_and_broken_rules_fail(broken_rule):
    """The rule alone on synthetic p/q with 4 draft tokens: the first emitted token ~ p."""
    vocab, k = 6, 4
    gen = torch.Generator().manual_seed(0)
    target_logits = torch.randn(k + 1, vocab, generator=gen) * 2
    draft_logits = torch.randn(k, vocab, generator=gen) * 2
    config = SamplingConfig(True)
    p, q = config.probs(target_logits), config.probs(draft_logits)

    def first_tokens(rule, draws):
        counts = torch.zeros(vocab)
        for _ in range(draws):
            drafted = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(k)]
            v = rule(target_logits, drafted, draft_probs=q, config=config, generator=gen)
            counts[drafted[0] if v.accepted else v.next_token] += 1
        return counts

    assert chi2_p(first_tokens(accept_speculative, 20_000), p[0]) > 0.01
    assert chi2_p(first_tokens(broken_rule, 20_000), p[0]) < 0.01


def test_top_k_and_top_p_restrict_the_support(small_vocab_pair):
    target, draft = small_vocab_pair
    engine = Engine(target, ChainSource(draft))
    with torch.no_grad():
        first = target(torch.tensor([[4, 5]])).logits[0, -1]
    top2 = set(first.topk(2).indices.tolist())
    seen = set()
    for seed in range(200):
        out = list(engine.run([4, 5], make_controller("fixed:3"), SamplingConfig(True, top_k=2, seed=seed), 1))
        seen.add(out[0].tokens[0])
    assert seen == top2
    cfg = SamplingConfig(True, top_p=1e-6, seed=0)  # nucleus of one token = greedy
    out = [t for e in engine.run([4, 5], make_controller("fixed:3"), cfg, 10) for t in e.tokens]
    greedy = [t for e in engine.run([4, 5], make_controller("fixed:3"), SamplingConfig(), 10) for t in e.tokens]
    assert out == greedy


def test_same_seed_same_output(small_vocab_pair):
    engine = Engine(small_vocab_pair[0], ChainSource(small_vocab_pair[1]))
    def go(seed):
        return [t for e in engine.run([1], make_controller("fixed:4"), SamplingConfig(True, seed=seed), 30) for t in e.tokens]
    assert go(7) == go(7)
    assert go(7) != go(8)


@pytest.mark.parametrize("kwargs", [{"temperature": 0}, {"temperature": -1}, {"top_k": 0}, {"top_p": 0}, {"top_p": 1.5}])
def test_invalid_sampling_parameters(kwargs):
    with pytest.raises(SpeckvError):
        SamplingConfig(True, **kwargs)
