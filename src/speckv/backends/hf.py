"""The transformers backend: a torch nn.Module (CPU, CUDA; bf16/fp16/fp32, bitsandbytes int8/NF4)
behind backends.base's Runner. The cache is transformers' DynamicCache; rollback crops it
(transformers 5 crops by a negative count)."""

from __future__ import annotations

import torch
from transformers import DynamicCache


class TorchSequence:
    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.cache = DynamicCache(config=module.config)

    def __len__(self) -> int:
        return self.cache.get_seq_length()

    def forward(self, tokens: list[int], rows: int, vocab: int) -> torch.Tensor:
        """Only the last `rows` positions go through the LM head."""
        input_ids = torch.tensor([tokens], device=self.module.device)
        out = self.module(input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=rows)
        return out.logits[0, -rows:, :vocab].float()

    def truncate(self, length: int) -> None:
        extra = self.cache.get_seq_length() - length
        if extra > 0:
            self.cache.crop(-extra)

    def close(self) -> None:
        self.cache = None


class TorchRunner:
    backend = "torch"

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.device = module.device

    @property
    def vocab(self) -> int:
        return self.module.get_output_embeddings().weight.shape[0]

    @property
    def max_context(self) -> int:
        return int(getattr(self.module.config, "max_position_embeddings", 1 << 30))

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def sequence(self) -> TorchSequence:
        return TorchSequence(self.module)

    def memory_bytes(self) -> int:
        base = getattr(self.module, "base", self.module)  # a ReducedHead wraps its model
        return int(base.get_memory_footprint())
