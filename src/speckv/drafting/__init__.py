"""Proposers behind one interface (drafting.base): a draft model's chain (chain.py), prompt
lookup (lookup.py), and the hybrid of the two that the controller picks from per step (hybrid.py).
`--drafter` specs are parsed here, once, into a DrafterSpec, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

from speckv.drafting.base import DraftSource
from speckv.drafting.hybrid import HybridSource
from speckv.drafting.lookup import LookupSource
from speckv.errors import SpeckvError

DRAFTERS = ("auto", "model", "lookup[:N_MAX[:N_MIN]]", "hybrid[:N_MAX[:N_MIN]]")


@dataclass(frozen=True)
class DrafterSpec:
    """A validated `--drafter`: `model` (the draft model's chain), `lookup` (prompt lookup, no
    draft model), `hybrid` (both; the controller picks per step). `auto` resolves to hybrid when
    a draft model is loaded and to `none` (the target alone) when none is: prompt lookup without
    a draft model is asked for by name."""

    kind: str
    lookup: LookupSource | None = None  # n-gram settings (lookup, hybrid)

    @property
    def needs_model(self) -> bool:
        return self.kind in ("model", "hybrid")

    def resolve(self, have_model: bool) -> DrafterSpec:
        """`auto` made concrete for whether a draft model is loaded."""
        if self.kind != "auto":
            return self
        return DrafterSpec("hybrid", LookupSource()) if have_model else DrafterSpec("none")

    def source(self, model: DraftSource | None) -> DraftSource | None:
        """The DraftSource an Engine gets; `model` is the draft model's (None: none loaded)."""
        spec = self.resolve(model is not None)
        if spec.needs_model and model is None:
            raise SpeckvError(f"drafter {spec} needs a draft model")
        if spec.kind == "none":
            return None
        if spec.kind == "model":
            return model
        if spec.kind == "lookup":
            return spec.lookup
        return HybridSource(model, spec.lookup)

    def __str__(self) -> str:
        if self.lookup is None:
            return self.kind
        return f"{self.kind}:{self.lookup.n_max}:{self.lookup.n_min}"


def parse_drafter(spec: str | DrafterSpec) -> DrafterSpec:
    """Parse `auto`, `model`, `lookup[:N_MAX[:N_MIN]]` or `hybrid[:N_MAX[:N_MIN]]`; anything else
    is a SpeckvError."""
    if isinstance(spec, DrafterSpec):
        return spec
    if not isinstance(spec, str):
        raise SpeckvError(f"drafter must be a spec such as 'lookup' (got {spec!r})")
    name, _, arg = spec.strip().partition(":")
    if name in ("model", "auto") and not arg:
        return DrafterSpec(name)
    if name not in ("lookup", "hybrid"):
        raise SpeckvError(f"unknown drafter {spec!r}; available: {', '.join(DRAFTERS)}")
    parts = arg.split(":") if arg else []
    if len(parts) > 2:
        raise SpeckvError(f"drafter {spec!r}: {name} takes at most N_MAX and N_MIN")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise SpeckvError(f"drafter {spec!r}: {arg!r} is not an integer n-gram length") from None
    return DrafterSpec(name, LookupSource(*numbers))
