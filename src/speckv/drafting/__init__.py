"""Proposers behind one interface (drafting.base): a draft model's chain (chain.py) and prompt
lookup (lookup.py). `--drafter` specs are parsed here, once, before any model loads."""

from __future__ import annotations

from speckv.drafting.base import DraftSource
from speckv.drafting.lookup import LookupSource
from speckv.errors import SpeckvError

DRAFTERS = ("model", "lookup[:N_MAX[:N_MIN]]")


def parse_drafter(spec: str) -> LookupSource | None:
    """None for `model` (the draft model's chain: needs a draft model); a LookupSource for
    `lookup[:N_MAX[:N_MIN]]`. Anything else is a SpeckvError."""
    name, _, arg = spec.strip().partition(":")
    if name == "model" and not arg:
        return None
    if name != "lookup":
        raise SpeckvError(f"unknown drafter {spec!r}; available: {', '.join(DRAFTERS)}")
    parts = arg.split(":") if arg else []
    if len(parts) > 2:
        raise SpeckvError(f"drafter {spec!r}: lookup takes at most N_MAX and N_MIN")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise SpeckvError(f"drafter {spec!r}: {arg!r} is not an integer n-gram length") from None
    return LookupSource(*numbers)


def drafter_name(source: DraftSource | None) -> str:
    """Canonical spec of a source (what Setup records): `model` or `lookup:N_MAX:N_MIN`."""
    if isinstance(source, LookupSource):
        return f"lookup:{source.n_max}:{source.n_min}"
    return "model"
