"""Controllers (speculation policies) and the `NAME[:ARGS]` parser the CLI uses."""

from __future__ import annotations

from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.control.fixed import Autoregressive, Fixed
from speckv.errors import SpeckvError

MAX_GAMMA = 32


def _int_arg(name: str, arg: str, lo: int, hi: int) -> int:
    try:
        value = int(arg)
    except ValueError:
        raise SpeckvError(f"controller {name}: {arg!r} is not an integer") from None
    if not lo <= value <= hi:
        raise SpeckvError(f"controller {name}: gamma {value} is out of range [{lo}, {hi}]")
    return value


def make_controller(spec: str) -> Controller:
    """Build a controller from 'fixed:4', 'autoregressive', ..."""
    name, _, arg = spec.strip().partition(":")
    if name == "fixed":
        if not arg:
            raise SpeckvError("controller fixed needs a gamma, e.g. fixed:4")
        return Fixed(_int_arg(name, arg, 1, MAX_GAMMA))
    if name == "autoregressive":
        if arg:
            raise SpeckvError("controller autoregressive takes no argument")
        return Autoregressive()
    raise SpeckvError(f"unknown controller {spec!r}; available: fixed:N (1..{MAX_GAMMA}), autoregressive")


__all__ = ["Controller", "RequestInfo", "StepOutcome", "make_controller", "MAX_GAMMA"]
