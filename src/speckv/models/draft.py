"""What a draft model is, loaded: the model at its level, then its LM head made cheap.

One place for it, so the API, evaluation and the benchmarks all draft with the same model: with
`vocab` the head keeps only the N most frequent tokens (models/reduced_head.py); otherwise, on CPU
at bf16, int8 or NF4, the head is int8 (models/int8_head.py: 32 -> 25 ms per NF4 draft token here,
the draft's argmax unchanged at 98% of positions). Neither can change the output: the target
verifies every drafted token.
"""

from __future__ import annotations

from speckv.models import int8_head
from speckv.models.load import LoadedModel, load_model


def load_draft(name_or_path: str, level: str | None, device: str = "auto", backend: str = "torch",
               vocab: int | None = None) -> LoadedModel:
    loaded = load_model(name_or_path, level, device, backend)
    return cheap_head(loaded, vocab)


def cheap_head(loaded: LoadedModel, vocab: int | None = None) -> LoadedModel:
    """A loaded draft with the head load_draft gives it (transformers models only)."""
    if loaded.runner.backend != "torch":
        return loaded
    if vocab is not None:
        from speckv.data.token_freq import token_ranking
        from speckv.models.reduced_head import reduce_head

        return reduce_head(loaded, vocab, token_ranking(loaded.tokenizer))
    if loaded.compression in int8_head.LEVELS:
        return int8_head.quantize_head(loaded)
    return loaded
