"""A draft model whose LM head scores only a kept subset of the vocabulary (FR-Spec, arXiv 2502.14856).

The LM head of a small draft is a large share of its forward (Qwen2.5-Coder-0.5B: 151936 x 896,
~22% of a CPU draft step). ReducedHead runs the model's decoder body, then multiplies the last
hidden states by a contiguous copy of the kept rows of the LM head only.

Invariants:
* Lossless: the target verifies every drafted token, so restricting what the draft can propose
  changes acceptance, never the output. In sampling mode the draft distribution q is zero outside
  the kept ids, and speculative sampling stays exact for any q.
* Drop-in: `forward(input_ids=, cache=, use_cache=, logits_to_keep=)` returns float32 logits over
  the full vocabulary (`get_output_embeddings()` is the base model's, so the engine's vocabulary
  size stays the full one). Kept ids carry exactly the base model's logits (same weights, same
  dtype, same matmul shape per row); every other id holds MASKED.
* MASKED is the lowest finite float32, not -inf: softmax gives exactly 0 there, argmax and top-k
  never pick it, and the entropy the chain drafter computes as -sum(p * log p) stays finite
  (0 * -inf is NaN; 0 * MASKED is 0).
* Special tokens (the tokenizer's all_special_ids and the model's eos ids) are always kept, so a
  draft can still end a turn.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from speckv.errors import SpeckvError
from speckv.models.load import LoadedModel

#: the logit of every id outside the kept set (see the module docstring for why not -inf)
MASKED = torch.finfo(torch.float32).min


class ReducedHead(torch.nn.Module):
    """A causal LM whose logits are computed for `kept` ids only and MASKED elsewhere."""

    def __init__(self, model: torch.nn.Module, kept: torch.Tensor):
        super().__init__()
        head = model.get_output_embeddings()
        weight = head.weight
        if not weight.is_floating_point():
            raise SpeckvError("the draft's LM head is quantized; a reduced vocabulary needs a float LM head")
        vocab = weight.shape[0]
        kept = torch.as_tensor(kept, dtype=torch.long)
        if kept.ndim != 1 or kept.numel() == 0:
            raise SpeckvError("kept token ids must be a non-empty 1-D list")
        if int(kept.min()) < 0 or int(kept.max()) >= vocab:
            raise SpeckvError(f"kept token ids must lie in [0, {vocab})")
        if kept.unique().numel() != kept.numel():
            raise SpeckvError("kept token ids must be distinct")
        self.base = model
        self.vocab = vocab
        kept = kept.to(weight.device)
        bias = getattr(head, "bias", None)
        self.register_buffer("kept", kept, persistent=False)
        self.register_buffer("kept_weight", weight.detach().index_select(0, kept).contiguous(), persistent=False)
        self.register_buffer("kept_bias", None if bias is None else bias.detach().index_select(0, kept).contiguous(),
                             persistent=False)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.base.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return self.base.generation_config

    def get_output_embeddings(self) -> torch.nn.Module:
        """The base model's full LM head: its row count is the vocabulary the engine works over."""
        return self.base.get_output_embeddings()

    def get_memory_footprint(self) -> int:
        extra = self.kept_weight.nbytes + self.kept.nbytes + (0 if self.kept_bias is None else self.kept_bias.nbytes)
        return self.base.get_memory_footprint() + extra

    def forward(self, input_ids: torch.Tensor | None = None, cache=None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs) -> CausalLMOutputWithPast:
        """As the base model's forward, with float32 logits that are MASKED outside the kept ids."""
        out = self.base.get_decoder()(input_ids=input_ids, cache=cache, use_cache=use_cache, **kwargs)
        hidden = slice_logits_to_keep(out.last_hidden_state, logits_to_keep)
        small = torch.nn.functional.linear(hidden.to(self.kept_weight.dtype), self.kept_weight, self.kept_bias)
        logits = torch.full((*small.shape[:-1], self.vocab), MASKED, dtype=torch.float32, device=small.device)
        logits.index_copy_(logits.ndim - 1, self.kept, small.float())
        return CausalLMOutputWithPast(logits=logits, cache=out.cache)


def _check_n(n: object, vocab: int) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise SpeckvError(f"draft vocabulary must be a whole number of tokens (got {n!r})")
    n = int(n)
    if n < 1:
        raise SpeckvError(f"draft vocabulary must be at least 1 token (got {n})")
    if n > vocab:
        raise SpeckvError(f"draft vocabulary {n} is larger than the model's ({vocab})")
    return n


def check_draft_vocab(n: int, model_dir: Path) -> None:
    """Refuse a draft vocabulary outside [1, vocab_size of model_dir/config.json] before any model loads."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpeckvError(f"cannot read {path}: {exc}") from None
    vocab = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size")) if isinstance(config, dict) else None
    if not isinstance(vocab, int) or isinstance(vocab, bool):
        raise SpeckvError(f"{path} has no vocab_size")
    _check_n(n, vocab)


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, numbers.Integral):
        return [int(value)]
    return [int(v) for v in value if v is not None]


def special_ids(tokenizer, model: torch.nn.Module) -> set[int]:
    """Ids a draft must always be able to propose: the tokenizer's special tokens and every eos id."""
    ids = set(_as_ids(getattr(tokenizer, "all_special_ids", None)))
    ids.update(_as_ids(getattr(tokenizer, "eos_token_id", None)))
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        ids.update(_as_ids(getattr(config, "eos_token_id", None)))
    return ids


def kept_ids(ranking: Iterable[int], n: int, vocab: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The first n ids of `ranking` that lie in [0, vocab), plus `always`, sorted (a LongTensor)."""
    ranked = np.asarray(ranking, dtype=np.int64).ravel()
    ranked = ranked[(ranked >= 0) & (ranked < vocab)]
    _, first = np.unique(ranked, return_index=True)
    top = ranked[np.sort(first)][:n]  # duplicates keep their first (best) rank
    extra = np.array([i for i in always if 0 <= i < vocab], dtype=np.int64)
    return torch.from_numpy(np.union1d(top, extra))


def reduce_head(loaded: LoadedModel, n: int, ranking: Iterable[int]) -> LoadedModel:
    """`loaded` with its model drafting over the n top-ranked ids (most frequent first) plus the
    special tokens; name, path, tokenizer and compression unchanged. Reducing a reduced model
    starts again from its full head."""
    model = loaded.module.base if isinstance(loaded.module, ReducedHead) else loaded.module
    vocab = model.get_output_embeddings().weight.shape[0]
    n = _check_n(n, vocab)
    kept = kept_ids(ranking, n, vocab, special_ids(loaded.tokenizer, model))
    if kept.numel() == 0:
        raise SpeckvError("the token ranking holds no id of the draft model's vocabulary")
    head = ReducedHead(model, kept)
    head.requested = n  # what the user asked for (kept holds the special tokens too): names the setup
    return dataclasses.replace(loaded, model=head)
