"""What the engine needs from a model, and nothing more: a `Runner` (one loaded model) makes
`Sequence`s (one run's KV cache), and a sequence feeds tokens and returns logits.

Invariants:
- A Sequence holds the cache of exactly the first `len(seq)` tokens it was fed, in order.
  `forward(tokens, rows, vocab)` appends `tokens` and returns float32 logits of the last `rows`
  of them over ids 0..vocab-1, on the runner's device; `truncate(n)` forgets all but the first n.
- Sequences of one Runner never share state, so suspended runs interleave freely. `close()`
  hands a sequence's resources back (a llama.cpp context); a closed sequence is not used again.
- Trees (runners with `trees`): `forward(tokens, rows, vocab, parents)` appends token-tree entries,
  `parents[i]` the cache index of entry i's parent (None: a committed token continuing the chain,
  allowed only before any tree entry). An entry attends to its ancestors and the committed prefix
  and sits at its parent's position + 1. `compact(length, path)` keeps the first `length` entries
  and one path of tree entries, which become committed; `truncate` below the tree drops it.
- Long-context drafts (drafting/context.py) use one of two optional calls to move entries:
  `gather(source, indices)` (torch: appends another sequence's entries, keys re-rotated) or
  `evict(start, count)` (llama.cpp: drops entries in place and shifts the later ones down; False
  where the cache cannot shift). A sequence with neither keeps a long-context window unevicted.
- Above this line nothing knows which library runs the model: drafters, controllers, replay,
  probes and traces all go through these calls (backends/hf.py: transformers; backends/llamacpp.py:
  llama.cpp through llama-cpp-python).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Sequence(Protocol):
    def __len__(self) -> int:
        """Tokens held in the cache."""

    def forward(self, tokens: list[int], rows: int, vocab: int) -> torch.Tensor:
        """Append tokens; float32 logits (rows x vocab) of the last `rows` of them."""

    def compact(self, length: int, path: list[int]) -> None:
        """Keep the first `length` entries, then the tree entries at `path` (trees only)."""

    def truncate(self, length: int) -> None:
        """Keep the first `length` cached tokens (no-op when it holds fewer)."""

    def close(self) -> None:
        """Release what the sequence holds."""


class Runner(Protocol):
    """One loaded model as the engine sees it."""

    backend: str  # "torch" or "llamacpp"
    device: torch.device
    vocab: int  # rows of the LM head (often padded past the tokenizer's vocabulary)
    max_context: int
    threads: int
    trees: bool  # whether sequences take `parents` (a custom attention mask)

    def sequence(self) -> Sequence:
        """An empty cache for one run."""

    def memory_bytes(self) -> int:
        """What the weights take."""


def sync_for(device: torch.device):
    """The call that waits for queued device work before a timer reads the clock."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def check_parents(parents: list[int | None], base: int, has_branch: bool) -> None:
    """Parents must point backwards, to the cache or to earlier entries of the same call, and
    committed (None) entries may not follow tree entries: a bug here would corrupt the cache."""
    tree = has_branch
    for i, parent in enumerate(parents):
        if parent is None:
            if tree:
                raise ValueError("a committed token cannot follow tree entries (compact first)")
        else:
            tree = True
            if not 0 <= parent < base + i:
                raise ValueError(f"tree entry {base + i} has parent {parent}: parents must come before their children")
