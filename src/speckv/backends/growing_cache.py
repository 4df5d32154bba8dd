"""A KV cache layer that appends in place; transformers' DynamicLayer re-concatenates the whole
layer on every forward.

Why: DynamicLayer.update is torch.cat([keys, new]): every forward copies every cached key and
value once more (the 1.5B target over 1,500 entries: 7 ms of a 160 ms one-token forward, and a
speculative step does one target and several draft forwards). This layer keeps spare room (the
capacity doubles) and writes new entries into it.

Invariants:
- `keys` / `values` are what DynamicLayer's are: (batch, heads, entries, dim) tensors that crop,
  index_select, clone and attention read as before. Here they are views of the filled prefix of a
  buffer, or tensors somebody assigned (a compacted tree path, a gathered window, a copied prompt):
  update then first adopts them into a new buffer, so an assignment is never lost.
- Only update writes into a buffer, and only past the current view's end; a view handed out earlier
  and cropped away is overwritten, so nobody keeps views across forwards (attention reads them in
  the forward that made them; whoever keeps entries clones them, as the prompt cache does).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

#: entries a new buffer holds beyond what it must (a prompt plus this many steps append in place)
SPARE = 256


class GrowingLayer(DynamicLayer):
    def __init__(self):
        super().__init__()
        self._keys_buffer: torch.Tensor | None = None
        self._values_buffer: torch.Tensor | None = None

    def _in_buffer(self) -> bool:
        buf = self._keys_buffer
        return (buf is not None and self.keys.data_ptr() == buf.data_ptr() and self.keys.stride() == buf.stride()
                and self.values.data_ptr() == self._values_buffer.data_ptr()
                and (not buf.is_inference() or torch.is_inference_mode_enabled()))

    def _adopt(self, needed: int, key_like: torch.Tensor, value_like: torch.Tensor) -> None:
        """New buffers with room for `needed` entries (and spare), holding the current entries."""
        n = self.get_seq_length()
        room = max(2 * needed, needed + SPARE)

        def buffer(current: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            buf = torch.empty((*like.shape[:-2], room, like.shape[-1]), dtype=like.dtype, device=like.device)
            if n:
                buf[..., :n, :] = current
            return buf

        self._keys_buffer, self._values_buffer = buffer(self.keys, key_like), buffer(self.values, value_like)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self.get_seq_length(), key_states.shape[-2]
        if not self._in_buffer() or n + new > self._keys_buffer.shape[-2]:
            self._adopt(n + new, key_states, value_states)
        self._keys_buffer[..., n:n + new, :] = key_states
        self._values_buffer[..., n:n + new, :] = value_states
        self.keys = self._keys_buffer[..., :n + new, :]
        self.values = self._values_buffer[..., :n + new, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._keys_buffer = self._values_buffer = None
        super().reset()


def growing_cache(config) -> DynamicCache:
    """transformers' DynamicCache for this model with its plain layers appending in place
    (sliding-window layers, which drop entries as they go, are left as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
