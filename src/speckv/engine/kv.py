"""The KV-cached forward every model call goes through, and rollback: keep only the first
`length` positions (transformers 5 crops by a negative count)."""

import torch
from transformers import DynamicCache


def cached_logits(model: torch.nn.Module, cache: DynamicCache, tokens: list[int], rows: int, vocab: int) -> torch.Tensor:
    """Feed `tokens` on top of `cache` and return the last `rows` rows of float32 logits over the
    shared vocabulary (only those rows go through the LM head)."""
    input_ids = torch.tensor([tokens], device=model.device)
    out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=rows)
    return out.logits[0, -rows:, :vocab].float()


def vocab_size(model: torch.nn.Module) -> int:
    """Rows of the model's LM head (often padded past the tokenizer's vocabulary)."""
    return model.get_output_embeddings().weight.shape[0]


def crop_to(cache: DynamicCache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
