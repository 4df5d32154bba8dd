"""The transformers backend: a torch nn.Module (CPU, CUDA; bf16/fp16/fp32, bitsandbytes int8/NF4)
behind backends.base's Runner. The cache is transformers' DynamicCache; rollback crops it
(transformers 5 crops by a negative count).

Trees: `forward(..., parents=...)` appends token-tree nodes with a 4D additive attention mask
(each node sees the committed prefix and its own ancestors) and position ids by depth, so keys are
rotated for the position they will hold once their path is accepted; `compact` then keeps one
path with an index_select on every layer, so nothing is recomputed.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from speckv.backends.base import check_parents

#: tokens per forward when a sequence reads a long prompt: peak activation memory is bounded by this
PREFILL_CHUNK = 1024


class TorchSequence:
    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.cache = DynamicCache(config=module.config)
        #: tree entries past the committed prefix: cache index -> (parent cache index, position)
        self.branch: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return self.cache.get_seq_length()

    def forward(self, tokens: list[int], rows: int, vocab: int, parents: list[int | None] | None = None) -> torch.Tensor:
        """Only the last `rows` positions go through the LM head. A long chain (a prompt) goes
        through in chunks of PREFILL_CHUNK tokens, so activations stay bounded whatever its length
        (the cache holds the same keys and values either way)."""
        if parents is None and not self.branch and len(tokens) > PREFILL_CHUNK and rows <= PREFILL_CHUNK:
            cut = len(tokens) - PREFILL_CHUNK
            for start in range(0, cut, PREFILL_CHUNK):
                self.forward(tokens[start:min(start + PREFILL_CHUNK, cut)], 1, vocab)
            tokens = tokens[cut:]
        input_ids = torch.tensor([tokens], device=self.module.device)
        extra = {}
        if parents is not None or self.branch:
            extra = self._tree_inputs(parents if parents is not None else [None] * len(tokens))
        out = self.module(input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=rows, **extra)
        return out.logits[0, -rows:, :vocab].float()

    def _tree_inputs(self, parents: list[int | None]) -> dict:
        """Position ids and the additive mask for appending entries with these parents."""
        base = len(self)
        check_parents(parents, base, bool(self.branch))
        n = len(parents)
        allowed = torch.zeros(n, base + n, dtype=torch.bool)
        positions = []
        for i, parent in enumerate(parents):
            index = base + i
            if parent is None:  # a committed token continuing the chain
                allowed[i, : index + 1] = True
                positions.append(index)
                continue
            self.branch[index] = (parent, (self.branch[parent][1] if parent in self.branch else parent) + 1)
            positions.append(self.branch[index][1])
            node = index
            while node in self.branch:  # the node and its tree ancestors ...
                allowed[i, node] = True
                node = self.branch[node][0]
            allowed[i, : node + 1] = True  # ... and the committed prefix up to where its path leaves it
        dtype = self.module.dtype if self.module.dtype.is_floating_point else torch.float32
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        device = self.module.device
        return {"attention_mask": mask[None, None].to(device),
                "position_ids": torch.tensor([positions], device=device)}

    def compact(self, length: int, path: list[int]) -> None:
        """Keep the first `length` entries and then the entries at `path` (ascending cache
        indices, each one's parent the entry before it): the cache becomes one committed chain."""
        keep = torch.tensor([*range(length), *path], device=self.module.device)
        for layer in self.cache.layers:
            if layer.is_initialized and layer.keys.numel():
                layer.keys = layer.keys.index_select(-2, keep)
                layer.values = layer.values.index_select(-2, keep)
        self.branch.clear()

    def truncate(self, length: int) -> None:
        extra = self.cache.get_seq_length() - length
        if extra > 0:
            self.cache.crop(-extra)
        for index in [i for i in self.branch if i >= length]:
            del self.branch[index]

    def close(self) -> None:
        self.cache = None
        self.branch = {}


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

    @property
    def trees(self) -> bool:
        """Whether this model's attention takes a custom 4D mask (sdpa and eager do)."""
        return getattr(self.module.config, "_attn_implementation", "sdpa") in ("sdpa", "eager")

    def sequence(self) -> TorchSequence:
        return TorchSequence(self.module)

    def memory_bytes(self) -> int:
        base = getattr(self.module, "base", self.module)  # a ReducedHead wraps its model
        return int(base.get_memory_footprint())
