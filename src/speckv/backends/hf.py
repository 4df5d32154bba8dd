"""The transformers backend: a torch nn.Module (CPU, CUDA; bf16/fp16/fp32, bitsandbytes int8/NF4)
behind backends.base's Runner. The cache is transformers' DynamicCache whose layers append in
place (growing_cache.py); rollback crops it (transformers 5 crops by a negative count). One-token
queries skip torch's CPU attention kernel (attention.py).

Trees: `forward(..., parents=...)` appends token-tree nodes with a 4D additive attention mask
(each node sees the committed prefix and its own ancestors) and position ids by depth, so keys are
rotated for the position they will hold once their path is accepted; `compact` then keeps one
path with an index_select on every layer, so nothing is recomputed.

Long inputs (drafting/context.py): `gather` copies entries of one sequence into another at new
positions. Cached keys carry their rotary position, so each moved key is re-rotated by the
distance it moves (RoPE rotations compose: R(p + d) = R(d) R(p)); values carry no position. The
target's `last_attention` (with `keep_queries`) is the last layer's attention of the newest cached
token over the cache, averaged over heads: the query is kept from the forward that computed it (a
hook on that one layer's q projection), so no layer switches to eager attention.

Prompt cache (`TorchRunner.keep_prompts`, off by default): a runner remembers the keys and values
of the last long prompt a sequence of it read, and a new sequence whose prompt starts with the same
tokens copies them instead of recomputing (as llama-server's cache_prompt does): a document asked
about again, or one document decoded under several settings, is read once. A copy holds exactly
what the forward computed, so nothing downstream can tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.models.qwen2.modeling_qwen2 import rotate_half

from speckv.backends import attention
from speckv.backends.base import check_parents
from speckv.backends.growing_cache import growing_cache

#: tokens per forward when a sequence reads a long prompt: peak activation memory is bounded by this
PREFILL_CHUNK = 1024
#: prompts shorter than this are not worth remembering
KEEP_PROMPT_MIN = 512


@dataclass
class PromptCache:
    """The keys and values (per layer) of the first len(tokens) entries of a sequence."""

    tokens: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


class TorchSequence:
    def __init__(self, module: torch.nn.Module, runner: TorchRunner | None = None):
        self.module = module
        self.runner = runner  # where a remembered prompt lives (keep_prompts)
        self.cache = growing_cache(module.config)  # transformers' DynamicCache, appending in place
        #: tree entries past the committed prefix: cache index -> (parent cache index, position)
        self.branch: dict[int, tuple[int, int]] = {}
        #: keep the last layer's queries of each forward (for last_attention); off: no hook runs
        self.keep_queries = False
        self._queries: dict[int, tuple[torch.Tensor, int]] = {}  # cache index -> (query before RoPE, position)

    def __len__(self) -> int:
        return self.cache.get_seq_length()

    def forward(self, tokens: list[int], rows: int, vocab: int, parents: list[int | None] | None = None) -> torch.Tensor:
        """Only the last `rows` positions go through the LM head. A long chain (a prompt) goes
        through in chunks of PREFILL_CHUNK tokens, so activations stay bounded whatever its length
        (the cache holds the same keys and values either way)."""
        if len(self) == 0 and parents is None and self.runner is not None and self.runner.keep_prompts:
            return self._read_prompt(tokens, rows, vocab)
        if parents is None and not self.branch and len(tokens) > PREFILL_CHUNK and rows <= PREFILL_CHUNK:
            cut = len(tokens) - PREFILL_CHUNK
            for start in range(0, cut, PREFILL_CHUNK):
                self.forward(tokens[start:min(start + PREFILL_CHUNK, cut)], 1, vocab)
            tokens = tokens[cut:]
        input_ids = torch.tensor([tokens], device=self.module.device)
        extra = {}
        if parents is not None or self.branch:
            extra = self._tree_inputs(parents if parents is not None else [None] * len(tokens))
        if not self.keep_queries:
            out = self.module(input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=rows, **extra)
            return out.logits[0, -rows:, :vocab].float()
        base, captured = len(self), []
        hook = _last_attention(self.module).q_proj.register_forward_hook(lambda m, i, o: captured.append(o[0]))
        try:
            out = self.module(input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=rows, **extra)
        finally:
            hook.remove()
        positions = extra["position_ids"][0].tolist() if extra else range(base, base + len(tokens))
        self._queries = {base + i: (captured[0][i], p) for i, p in enumerate(positions)}
        return out.logits[0, -rows:, :vocab].float()

    def _read_prompt(self, tokens: list[int], rows: int, vocab: int) -> torch.Tensor:
        """The first forward with the runner's prompt cache: copy the longest remembered prefix
        (leaving at least the rows asked for to compute), then remember this prompt if long."""
        kept = self.runner.prompt
        reuse = 0
        if kept is not None:
            limit = min(len(kept.tokens), len(tokens) - rows)
            while reuse < limit and kept.tokens[reuse] == tokens[reuse]:
                reuse += 1
        if reuse:
            for layer, (keys, values) in zip(self.cache.layers, kept.layers):
                layer.lazy_initialization(keys, values)
                layer.keys, layer.values = keys[..., :reuse, :].clone(), values[..., :reuse, :].clone()
        runner, self.runner = self.runner, None  # the rest is an ordinary forward
        try:
            logits = self.forward(tokens[reuse:], rows, vocab)
        finally:
            self.runner = runner
        if len(tokens) >= KEEP_PROMPT_MIN and not self.branch and (kept is None or reuse < len(tokens) - rows):
            runner.prompt = PromptCache(list(tokens), [(layer.keys.clone(), layer.values.clone()) for layer in self.cache.layers])
        return logits

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
        moved = {old: length + i for i, old in enumerate(path)}
        self._queries = {moved.get(i, i): q for i, q in self._queries.items() if i < length or i in moved}

    def gather(self, source: TorchSequence, indices: list[int]) -> None:
        """Append the entries of `source` at `indices` (one model's sequence; tree entries too)
        here as committed entries, each at the position it takes here: keys re-rotated by the
        distance moved."""
        if self.branch:
            raise ValueError("gather appends committed entries (compact the tree here first)")
        if not indices:
            return
        device = self.module.device
        where = torch.tensor(indices, device=device)
        held = [source.branch[i][1] if i in source.branch else i for i in indices]  # the positions they were computed at
        delta = torch.arange(len(self), len(self) + len(indices), device=device) - torch.tensor(held, device=device)
        cos = sin = None
        for mine, theirs in zip(self.cache.layers, source.cache.layers):
            keys = theirs.keys.index_select(-2, where)
            values = theirs.values.index_select(-2, where)
            if cos is None:
                cos, sin = _rotation(self.module, keys, delta)
            keys = (keys.float() * cos + rotate_half(keys.float()) * sin).to(keys.dtype)
            if not mine.is_initialized:
                mine.lazy_initialization(keys, values)
            mine.keys = torch.cat([mine.keys, keys], dim=-2)
            mine.values = torch.cat([mine.values, values], dim=-2)

    def last_attention(self) -> torch.Tensor | None:
        """The last layer's attention of the newest cached entry over all cached entries
        (float32, averaged over heads); None when that entry's query was not kept."""
        newest = len(self) - 1
        if self.branch or newest not in self._queries:
            return None
        query, position = self._queries[newest]
        attention = _last_attention(self.module)
        head_dim = attention.head_dim
        q = query.view(-1, head_dim)  # (heads, head_dim)
        if getattr(attention, "q_norm", None) is not None:  # Qwen3-style models normalize queries before RoPE
            q = attention.q_norm(q)
        cos, sin = _rotation(self.module, q, torch.tensor([position], device=q.device))
        q = q.float() * cos[0, 0] + rotate_half(q.float()) * sin[0, 0]
        keys = self.cache.layers[-1].keys[0].float()  # (kv_heads, n, head_dim)
        q = q.view(keys.shape[0], -1, head_dim)  # (kv_heads, group, head_dim): grouped-query attention
        scores = torch.einsum("kgd,knd->kgn", q, keys) * head_dim ** -0.5
        return scores.softmax(-1).mean(dim=(0, 1))

    def truncate(self, length: int) -> None:
        extra = self.cache.get_seq_length() - length
        if extra > 0:
            self.cache.crop(-extra)
        for index in [i for i in self.branch if i >= length]:
            del self.branch[index]
        self._queries = {i: q for i, q in self._queries.items() if i < length}

    def close(self) -> None:
        self.cache = None
        self.branch = {}
        self._queries = {}


def _decoder(module: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack under the LM head (a ReducedHead wraps its model as `base`)."""
    return getattr(module, "base", module).model


def _last_attention(module: torch.nn.Module) -> torch.nn.Module:
    return _decoder(module).layers[-1].self_attn


def _rotation(module: torch.nn.Module, like: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (float32, broadcastable over heads) that rotate keys by `delta` positions.
    Plain and linearly scaled RoPE compose this way; RoPE types that also scale magnitudes do not."""
    rotary = _decoder(module).rotary_emb
    if getattr(rotary, "attention_scaling", 1.0) != 1.0 or getattr(rotary, "rope_type", "default") not in ("default", "linear"):
        raise ValueError(f"cannot move cached keys under {rotary.rope_type} RoPE")
    cos, sin = rotary(like.float(), delta[None].to(like.device))
    return cos.float()[:, None], sin.float()[:, None]


class TorchRunner:
    backend = "torch"

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.device = module.device
        # sdpa, except one-token queries skip torch's CPU kernel (backends/attention.py)
        base = getattr(module, "base", module)  # a ReducedHead wraps its model
        if getattr(module.config, "_attn_implementation", None) == "sdpa" and hasattr(base, "set_attn_implementation"):
            base.set_attn_implementation(attention.register())
        #: remember the last long prompt's cache for sequences that start with it (see above)
        self.keep_prompts = False
        self.prompt: PromptCache | None = None

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
        """Whether this model's attention takes a custom 4D mask (sdpa, ours and eager do)."""
        return getattr(self.module.config, "_attn_implementation", "sdpa") in ("sdpa", attention.NAME, "eager")

    def sequence(self) -> TorchSequence:
        return TorchSequence(self.module, self)

    def memory_bytes(self) -> int:
        base = getattr(self.module, "base", self.module)  # a ReducedHead wraps its model
        return int(base.get_memory_footprint())
