"""Shared fixtures: tiny random-weight models built from a transformers config."""

from __future__ import annotations

import string
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def tiny_model(seed: int, vocab: int = 64, layers: int = 2, hidden: int = 32, temperature: float = 1.0,
               context: int = 256) -> Qwen2ForCausalLM:
    """A random Qwen2 small enough to run thousands of forwards in seconds."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        tie_word_embeddings=False, eos_token_id=None, bos_token_id=None, pad_token_id=None,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # sharpen logits so greedy/sampled paths are not all near-uniform
        model.lm_head.weight.mul_(temperature)
    return model


#: 64 symbols, one per row of the tiny models' vocabulary
CHARS = string.ascii_letters + string.digits + " \n"


class CharTokenizer:
    """One token per character: enough tokenizer for a Decoder over the tiny random models."""

    chat_template = None
    eos_token_id = None

    def get_vocab(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(CHARS)}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [CHARS.index(c) for c in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(CHARS[i] for i in ids)


def tiny_decoder(pair, controller=None):
    """A Decoder over (target, draft) tiny models with the character tokenizer."""
    from speckv.api import Decoder
    from speckv.models.load import LoadedModel

    target, draft = pair
    return Decoder(LoadedModel("tiny-target", Path("."), target, CharTokenizer(), "fp32"),
                   LoadedModel("tiny-draft", Path("."), draft, CharTokenizer(), "fp32"), controller)


def greedy_runs_of_the_target(dec, prompts=("abcabc", "hello world", "x1y2z3"), max_new_tokens=40) -> list:
    """The Decoder's greedy runs on each prompt, each asserted equal to the target's output alone
    (callers check that drafts were accepted at all)."""
    runs = []
    for prompt in prompts:
        want = dec.generate(prompt, max_new_tokens=max_new_tokens, controller="autoregressive")
        got = dec.generate(prompt, max_new_tokens=max_new_tokens)
        assert got.token_ids == want.token_ids
        runs.append(got)
    return runs


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
