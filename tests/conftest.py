"""Shared fixtures: tiny random-weight models built from a transformers config."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def tiny_model(seed: int, vocab: int = 64, layers: int = 2, hidden: int = 32, temperature: float = 1.0) -> Qwen2ForCausalLM:
    """A random Qwen2 small enough to run thousands of forwards in seconds."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, eos_token_id=None, bos_token_id=None, pad_token_id=None,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # sharpen logits so greedy/sampled paths are not all near-uniform
        model.lm_head.weight.mul_(temperature)
    return model


@pytest.fixture(scope="session")
def tiny_pair():
    """(target, draft): related but different models, so drafts are sometimes rejected."""
    target = tiny_model(0, temperature=8.0)
    draft = tiny_model(0, temperature=8.0)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.3 * torch.randn_like(p) * p.std())
    return target, draft


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the speckv CLI in-process: returns (exit code, stdout, stderr)."""
    from speckv.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["speckv", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run
