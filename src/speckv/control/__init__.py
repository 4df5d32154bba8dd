"""Controllers (speculation policies) and make_controller, which builds one from a ControllerSpec
(control/spec.py: the one `NAME[:ARGS]` parser the CLI, API, server, bench and eval use).

Nothing imported here needs scikit-learn: fitting lives in `train` (and `speckv.cost`), imported
only by the commands that train or calibrate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from speckv.control import cost_aware, heterospec, speckv_mlp
from speckv.control.artifact import Artifact, Setup, default_path, load_artifact, shipped_path
from speckv.control.base import Controller, RequestInfo, StepOutcome
from speckv.control.cost_aware import AcceptanceModel, CostAware, LookupAcceptance
from speckv.control.fixed import Autoregressive, Fixed
from speckv.control.cost_tree import CostTree
from speckv.control.heterospec import HeteroSpec
from speckv.control.tree import FixedTree
from speckv.control.hf import HfConfidence, HfHeuristic
from speckv.control.pmin import PMin
from speckv.control.speckv_mlp import SpeckvMLP
from speckv.control.spec import MAX_GAMMA, NAMES, ControllerSpec
from speckv.errors import SpeckvError
from speckv.cost import CostModel  # imports scikit-learn only to fit one (speckv calibrate)


def cost_path(setup: Setup) -> Path:
    return default_path("cost", setup)


def _cost_for(setup: Setup | None) -> CostModel | None:
    """The calibrated cost model for this setup, if `speckv calibrate` has made one."""
    if setup is not None and cost_path(setup).is_file():
        return CostModel.load(cost_path(setup))
    return None


def cost_for(setup: Setup | None) -> CostModel:
    """The cost model controllers price with: the calibrated (or probed) one, else the ratio default."""
    return _cost_for(setup) or CostModel.ratio()


def _artifact(kind: str, features: list[str], path: Path | None, setup: Setup | None) -> Artifact:
    if path is not None:
        return load_artifact(path, kind, features, setup)
    if setup is None:
        raise SpeckvError(f"controller {kind} needs a trained artifact: {kind}:PATH")
    path = default_path(kind, setup)
    if not path.is_file():
        raise SpeckvError(f"no trained {kind} controller for {setup.slug()}; run `speckv train` (or use auto)")
    return load_artifact(path, kind, features, setup)


def cost_aware_from(art: Artifact, name: str = "cost-aware", cost: CostModel | None = None,
                    kind: type[CostAware] = CostAware) -> CostAware:
    """A CostAware (or CostTree) from an artifact; `cost` (this machine's, when measured) replaces
    the one it was trained with."""
    p = art.params
    # lookup's model as trained with it, if over this speckv's lookup features; else the built-in one
    # (an artifact from before the features changed keeps its draft model and cost, not stale weights)
    fits = "lookup_weights" in p and p.get("lookup_features") == cost_aware.LOOKUP_FEATURES
    lookup = LookupAcceptance(tuple(p["lookup_weights"])) if fits else LookupAcceptance()
    return kind(AcceptanceModel(tuple(p["weights"]), p["prior"]), cost or CostModel.from_dict(p["cost"]),
                     p["max_gamma"], name=name, lookup=lookup)


def heterospec_from(art: Artifact) -> HeteroSpec:
    p = art.params
    return HeteroSpec(p["edges"], p["depth"], p["nodes"], p["width"], tuple(p["gammas"]))


def speckv_from(art: Artifact) -> SpeckvMLP:
    p = art.params
    return SpeckvMLP(p["hidden"], p["hidden_bias"], p["out"], p["out_bias"], art.setup.compression, tuple(p["gammas"]))


def _best_cost_aware(setup: Setup | None, name: str, kind: type[CostAware] = CostAware) -> CostAware:
    """Trained here (speckv train) > shipped for the built-in pair > untrained."""
    if setup is not None and default_path("cost-aware", setup).is_file():
        return cost_aware_from(_artifact("cost-aware", cost_aware.FEATURES, None, setup), name, kind=kind)
    full = _shipped_setup(setup) if setup is not None else None
    if full is not None and (path := shipped_path("cost-aware", full)).is_file():
        return cost_aware_from(load_artifact(path, "cost-aware", cost_aware.FEATURES, full), name, _cost_for(setup), kind)
    return kind(cost=_cost_for(setup), name=name)


def _shipped_setup(setup: Setup) -> Setup:
    """The setup whose shipped acceptance models hold for this one: a reduced draft head ranks
    tokens as the full one does, and on llama.cpp every level of the built-in GGUFs holds the
    Q4_K_M values that the shipped torch bf16 models are dequantized from (same predictions; the
    prices come from this machine's probe of the llama.cpp setup itself)."""
    full = replace(setup, draft_vocab=None)
    if setup.backend == "llamacpp":
        draft_level = "bf16" if setup.draft != "-" else setup.draft_compression
        full = replace(full, compression="bf16", draft_compression=draft_level, backend="torch")
    return full


def make_controller(spec: str | ControllerSpec, setup: Setup | None = None) -> Controller:
    """Build a controller from a spec ('fixed:4', 'auto', 'cost-aware:path.json', ... or a parsed
    ControllerSpec); only what runs live in our engine (not the oracle, not hf-assisted).

    `setup` (pair, compression, device) selects trained artifacts and calibrated costs."""
    spec = ControllerSpec.parse(spec)
    name = spec.name
    if name == "fixed":
        return Fixed(spec.gamma)
    if name == "tree":
        shape = spec.shape
        return FixedTree(shape.depth, shape.nodes, shape.width, shape.rerank, shape.spine)
    if name == "heterospec":  # the given file > trained here > shipped for the built-in pair
        if spec.artifact is None and setup is not None and not default_path("heterospec", setup).is_file():
            full = _shipped_setup(setup)
            if (path := shipped_path("heterospec", full)).is_file():
                return heterospec_from(load_artifact(path, "heterospec", heterospec.FEATURES, full))
        return heterospec_from(_artifact("heterospec", heterospec.FEATURES, spec.artifact, setup))
    if name == "autoregressive":
        return Autoregressive()
    if name == "hf-heuristic":
        return HfHeuristic(spec.gamma)
    if name == "hf-confidence":
        return HfConfidence(spec.gamma)
    if name == "p-min":
        return PMin(spec.gamma, spec.p_min)
    if name == "cost-aware":
        return cost_aware_from(_artifact("cost-aware", cost_aware.FEATURES, spec.artifact, setup))
    if name == "speckv":
        return speckv_from(_artifact("speckv", speckv_mlp.FEATURES, spec.artifact, setup))
    if name == "auto":
        return _best_cost_aware(setup, "auto")
    if name == "cost-tree":
        if spec.artifact is not None:
            return cost_aware_from(_artifact("cost-aware", cost_aware.FEATURES, spec.artifact, setup), "cost-tree", kind=CostTree)
        return _best_cost_aware(setup, "cost-tree", CostTree)
    raise AssertionError(f"ControllerSpec.parse admitted {spec!r}, which make_controller cannot build")


__all__ = ["Controller", "ControllerSpec", "RequestInfo", "StepOutcome", "Setup", "make_controller", "MAX_GAMMA", "NAMES"]
