"""Model backends behind one narrow boundary (base.py): transformers (hf.py) and llama.cpp (llamacpp.py)."""

from __future__ import annotations

from speckv.backends.base import Runner, Sequence, sync_for


def as_runner(model) -> Runner:
    """A Runner as is; a transformers model (torch nn.Module) wrapped in the torch backend, so
    Python callers may hand the engine either."""
    if hasattr(model, "sequence"):
        return model
    from speckv.backends.hf import TorchRunner

    return TorchRunner(model)


__all__ = ["Runner", "Sequence", "as_runner", "sync_for"]
