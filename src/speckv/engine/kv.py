"""KV cache rollback: keep only the first `length` positions (transformers 5 crops by a negative count)."""

from transformers import DynamicCache


def crop_to(cache: DynamicCache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
