"""A draft model's LM head in int8 (CPU): the same rows, a quarter of the bytes of fp32, half of bf16.

A draft token on CPU reads the whole LM head: Qwen2.5-Coder-0.5B's is 151936 x 896, untied, and
bitsandbytes leaves it in bf16 when it quantizes the body to NF4, so it costs 9.6 ms of a 29-32 ms NF4
draft token here. In int8 (symmetric, one scale per row; the hidden state quantized per row at
run time) it costs 3.3 ms (`torch._int_mm`, int32 accumulation).

Invariants:
- Drafts only: the target verifies every drafted token, so the head's rounding changes which
  tokens the draft proposes, never the output. A target's head is never touched.
- Drop-in: `forward(hidden)` returns logits of hidden's dtype and shape [..., rows]; `weight` is
  the int8 matrix (so `weight.shape` gives the vocabulary, and a reduced vocabulary, which needs a
  float head, is refused: models/reduced_head.py).
- Where this torch has no CPU `_int_mm`, or no fast one, `quantize_head` leaves the float head in place.
"""

from __future__ import annotations

import torch

from speckv.models.load import LoadedModel

#: draft levels whose head `load_draft` makes int8 on CPU (fp32 is kept exact; fp16 has no fast CPU path anyway)
LEVELS = ("bf16", "int8", "nf4")


class Int8Head(torch.nn.Module):
    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        w = head.weight.detach().float()
        scale = w.abs().amax(1).clamp_min(1e-12) / 127
        self.register_buffer("qweight", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if head.bias is None else head.bias.detach().float())
        self.out_features, self.in_features = w.shape

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, self.in_features).float()
        step = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        xq = torch.round(flat / step).to(torch.int8)
        out = torch._int_mm(xq, self.qweight.t()).float() * step * self.scale
        if self.bias is not None:
            out += self.bias
        return out.to(hidden.dtype).reshape(*hidden.shape[:-1], self.out_features)


def available() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU at all."""
    try:
        torch._int_mm(torch.ones(1, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def supported() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU, and fast: without AVX-512 its
    `_int_mm` is scalar code and an int8 head costs more than the bf16 one (models/cpu_kernels.py)."""
    from speckv.models import cpu_kernels

    return available() and cpu_kernels.int8_pays()


def quantize_head(loaded: LoadedModel) -> LoadedModel:
    """The draft with its LM head in int8 (in place; an untied float head is freed), or as it
    was where the head is not a plain float Linear on the CPU or the CPU has no int8 matmul."""
    model = loaded.model
    head = model.get_output_embeddings()
    if (not isinstance(head, torch.nn.Linear) or not head.weight.is_floating_point()
            or head.weight.device.type != "cpu" or not supported()):
        return loaded
    model.set_output_embeddings(Int8Head(head))
    return loaded
