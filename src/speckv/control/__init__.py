"""Controllers (speculation policies) and the `NAME[:ARGS]` parser the CLI and API use."""

from __future__ import annotations

from pathlib import Path

from speckv.control import cost_aware, speckv_mlp
from speckv.control.artifact import Artifact, Setup, default_path, load_artifact
from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.control.cost_aware import AcceptanceModel, CostAware
from speckv.control.fixed import Autoregressive, Fixed
from speckv.control.hf import HfConfidence, HfHeuristic
from speckv.control.pmin import PMin
from speckv.control.speckv_mlp import SpeckvMLP
from speckv.errors import SpeckvError
from speckv.measure.cost import CostModel

MAX_GAMMA = 32
NAMES = ("auto", "fixed:N", "autoregressive", "hf-heuristic[:N]", "hf-confidence[:N]", "p-min[:N[:P]]",
         "cost-aware[:ARTIFACT]", "speckv[:ARTIFACT]", "oracle (replay only)")


def _int_arg(name: str, arg: str, lo: int = 1, hi: int = MAX_GAMMA) -> int:
    try:
        value = int(arg)
    except ValueError:
        raise SpeckvError(f"controller {name}: {arg!r} is not an integer") from None
    if not lo <= value <= hi:
        raise SpeckvError(f"controller {name}: {value} is out of range [{lo}, {hi}]")
    return value


def _prob_arg(name: str, arg: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise SpeckvError(f"controller {name}: {arg!r} is not a number") from None
    if not 0 <= value <= 1:
        raise SpeckvError(f"controller {name}: probability {value} is out of [0, 1]")
    return value


def cost_path(setup: Setup) -> Path:
    return default_path("cost", setup)


def _cost_for(setup: Setup | None) -> CostModel | None:
    """The calibrated cost model for this setup, if `speckv calibrate` has made one."""
    if setup is not None and cost_path(setup).is_file():
        return CostModel.load(cost_path(setup))
    return None


def _artifact(kind: str, features: list[str], arg: str, setup: Setup | None) -> Artifact:
    if arg:
        return load_artifact(Path(arg), kind, features, setup)
    if setup is None:
        raise SpeckvError(f"controller {kind} needs a trained artifact: {kind}:PATH")
    path = default_path(kind, setup)
    if not path.is_file():
        raise SpeckvError(f"no trained {kind} controller for {setup.slug()}; run `speckv train` (or use auto)")
    return load_artifact(path, kind, features, setup)


def cost_aware_from(art: Artifact, name: str = "cost-aware") -> CostAware:
    p = art.params
    return CostAware(AcceptanceModel(tuple(p["weights"]), p["prior"]), CostModel.from_dict(p["cost"]),
                     p["max_gamma"], name=name)


def speckv_from(art: Artifact) -> SpeckvMLP:
    p = art.params
    return SpeckvMLP(p["hidden"], p["hidden_bias"], p["out"], p["out_bias"], art.setup.compression, tuple(p["gammas"]))


def precheck(spec: str) -> bool:
    """Validate a spec before any model is loaded; True if it needs a draft model.
    (Trained artifacts are checked once the setup is known.)"""
    if spec.strip().partition(":")[0] in ("cost-aware", "speckv"):
        return True
    return make_controller(spec).uses_draft


def make_controller(spec: str, setup: Setup | None = None) -> Controller:
    """Build a controller from 'fixed:4', 'auto', 'cost-aware:path.json', ...

    `setup` (pair, compression, device) selects trained artifacts and calibrated costs."""
    name, _, arg = spec.strip().partition(":")
    if name == "fixed":
        if not arg:
            raise SpeckvError("controller fixed needs a gamma, e.g. fixed:4")
        return Fixed(_int_arg(name, arg))
    if name in ("autoregressive", "oracle", "auto") and arg:
        raise SpeckvError(f"controller {name} takes no argument")
    if name == "autoregressive":
        return Autoregressive()
    if name == "hf-heuristic":
        return HfHeuristic(_int_arg(name, arg) if arg else 5)
    if name == "hf-confidence":
        return HfConfidence(_int_arg(name, arg) if arg else 20)
    if name == "p-min":
        n, _, p = arg.partition(":")
        return PMin(_int_arg(name, n) if n else 16, _prob_arg(name, p) if p else 0.75)
    if name == "cost-aware":
        return cost_aware_from(_artifact("cost-aware", cost_aware.FEATURES, arg, setup))
    if name == "speckv":
        return speckv_from(_artifact("speckv", speckv_mlp.FEATURES, arg, setup))
    if name == "auto":
        if setup is not None and default_path("cost-aware", setup).is_file():
            return cost_aware_from(_artifact("cost-aware", cost_aware.FEATURES, "", setup), name="auto")
        return CostAware(cost=_cost_for(setup), name="auto")
    if name == "oracle":
        raise SpeckvError("controller oracle knows the future: it runs only in replay (speckv eval)")
    raise SpeckvError(f"unknown controller {spec!r}; available: {', '.join(NAMES)}")


__all__ = ["Controller", "RequestInfo", "StepOutcome", "Setup", "make_controller", "precheck", "MAX_GAMMA", "NAMES"]
