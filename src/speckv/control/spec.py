"""Controller specs: `NAME[:ARGS]` parsed once, here, into a typed and validated ControllerSpec.

Every place that takes a spec string (make_controller, speckv.load, the CLI, the server's requests,
bench methods, eval's controllers and baselines) parses it with `ControllerSpec.parse` and then
reads typed fields and flags; nothing else splits a spec on ':' or compares its name.

Forms: auto, autoregressive, fixed:N, tree[:depth=D,nodes=N,width=W,rerank|spine], heterospec[:ARTIFACT], cost-tree[:ARTIFACT], hf-heuristic[:N], hf-confidence[:N], p-min[:N[:P]],
cost-aware[:ARTIFACT], speckv[:ARTIFACT], oracle (replay only) and, where a caller allows it,
hf-assisted[:N] (transformers' own assisted generation) and hf-lookup[:N] (transformers' prompt
lookup, `prompt_lookup_num_tokens`): bench/eval methods, not our engine.
Parsing reads no file and loads nothing (so it imports no model or training library): trained
artifacts are found and checked when a controller is built for a setup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from speckv.errors import SpeckvError

MAX_GAMMA = 32
NAMES = ("auto", "fixed:N", "tree[:depth=D,nodes=N,width=W,rerank|spine]", "heterospec[:ARTIFACT]", "cost-tree[:ARTIFACT]", "autoregressive", "hf-heuristic[:N]", "hf-confidence[:N]", "p-min[:N[:P]]",
         "cost-aware[:ARTIFACT]", "speckv[:ARTIFACT]", "oracle (replay only)")
METHODS = ("hf-assisted[:N]", "hf-lookup[:N]", "llamacpp-server", "llamacpp-spec[:N]")  # not controllers: what bench and eval also run
EXTERNAL = ("hf-assisted", "hf-lookup", "llamacpp-server", "llamacpp-spec")  # transformers' and llama-server's own loops

#: the typed arguments each name takes (ControllerSpec field names)
_ARGS = {"auto": (), "autoregressive": (), "oracle": (), "fixed": ("gamma",), "tree": ("shape",), "heterospec": ("artifact",), "cost-tree": ("artifact",), "hf-heuristic": ("gamma",),
         "hf-confidence": ("gamma",), "p-min": ("gamma", "p_min"), "cost-aware": ("artifact",),
         "speckv": ("artifact",), "hf-assisted": ("gamma",), "hf-lookup": ("gamma",), "llamacpp-server": (),
         "llamacpp-spec": ("gamma",)}
_DEFAULT_GAMMA = {"hf-heuristic": 5, "hf-confidence": 20, "p-min": 16}  # fixed has none: it needs one
_DEFAULT_P_MIN = 0.75
MAX_NODES = 128  # tree nodes verified in one target forward
MAX_WIDTH = 16


@dataclass(frozen=True)
class TreeShape:
    """A draft tree's bounds: levels, nodes verified, nodes kept per level, EAGLE-2 re-ranking."""

    depth: int = 5
    nodes: int = 16
    width: int = 4
    rerank: bool = False
    spine: bool = False

    def __post_init__(self) -> None:
        for name, value, top in (("depth", self.depth, MAX_GAMMA), ("nodes", self.nodes, MAX_NODES),
                                 ("width", self.width, MAX_WIDTH)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpeckvError(f"controller tree: {name} {value!r} is not an integer")
            if not 1 <= value <= top:
                raise SpeckvError(f"controller tree: {name}={value} is out of range [1, {top}]")
        if self.nodes < self.depth:
            raise SpeckvError(f"controller tree: nodes={self.nodes} < depth={self.depth} (a tree of depth "
                              f"{self.depth} needs at least {self.depth} nodes)")
        if self.width > self.nodes:
            raise SpeckvError(f"controller tree: width={self.width} > nodes={self.nodes}")
        if self.rerank and self.spine:
            raise SpeckvError("controller tree: rerank and spine exclude each other (a spine tree has nothing to re-rank)")

    @classmethod
    def parse(cls, arg: str) -> TreeShape:
        """`depth=D,nodes=N,width=W,rerank|spine` in any order, each optional."""
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in arg.split(","))):
            key, eq, value = item.partition("=")
            if key in ("rerank", "spine") and not eq:
                values[key] = True
            elif key in ("depth", "nodes", "width") and eq:
                values[key] = _int_arg("tree", value)
            else:
                raise SpeckvError(f"controller tree: {item!r} is not one of depth=D, nodes=N, width=W, rerank, spine")
        if "nodes" not in values and "depth" in values:  # enough nodes for the depth asked for
            values["nodes"] = max(cls.nodes, values["depth"])
        if "width" not in values and "nodes" in values:
            values["width"] = min(cls.width, values["nodes"])
        return cls(**values)

    def __str__(self) -> str:
        return f"depth={self.depth},nodes={self.nodes},width={self.width}" + (",rerank" if self.rerank else "") + (
            ",spine" if self.spine else "")


_TREE_OPTION = re.compile(r"^(depth|nodes|width)=|^(rerank|spine)$")


def split_specs(text: str) -> list[str]:
    """A comma-separated list of specs, where a spec's own options (`tree:depth=5,nodes=16`,
    `retrieval:budget=512,chunk=16`) stay with it: a piece that is a tree option, or any
    `key=value` after a spec with options, joins the spec before it."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        option = _TREE_OPTION.match(piece) and out and out[-1].startswith("tree")
        if option or (out and "=" in piece and ":" not in piece and ":" in out[-1]):
            out[-1] += "," + piece
        elif piece:
            out.append(piece)
    return out


def _unknown(text: object, external: bool) -> SpeckvError:
    available = (*NAMES, *METHODS) if external else NAMES
    return SpeckvError(f"unknown controller {text!r}; available: {', '.join(available)}")


def _hf_assisted_range(text: str) -> SpeckvError:
    name = text.partition(":")[0]
    return SpeckvError(f"unknown method {text!r}: {name} takes an optional token count in [1, {MAX_GAMMA}]")


def _int_arg(name: str, arg: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise SpeckvError(f"controller {name}: {arg!r} is not an integer") from None


def _prob_arg(name: str, arg: str) -> float:
    try:
        return float(arg)
    except ValueError:
        raise SpeckvError(f"controller {name}: {arg!r} is not a number") from None


def _format_float(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


@dataclass(frozen=True)
class ControllerSpec:
    """A validated controller (or bench method) spec. Defaults are filled in, so two specs that
    build the same controller are equal: `p-min` == `p-min:16:0.75`, `hf-heuristic` == `hf-heuristic:5`
    (but `hf-assisted` keeps no count: it means transformers' own defaults, not `hf-assisted:20`)."""

    name: str
    #: fixed, hf-heuristic, hf-confidence: gamma; p-min: n_max; hf-assisted: tokens (None: transformers' default)
    gamma: int | None = None
    #: p-min: the draft probability below which drafting stops
    p_min: float | None = None
    #: cost-aware, speckv: an explicit artifact file (None: the one `speckv train` made for the setup)
    artifact: Path | None = None
    #: tree: the draft tree's shape
    shape: TreeShape | None = None

    def __post_init__(self) -> None:
        name = self.name
        if name not in _ARGS:
            raise _unknown(name, external=True)
        given = [f for f in ("gamma", "p_min", "artifact", "shape") if getattr(self, f) is not None]
        if any(f not in _ARGS[name] for f in given):
            raise SpeckvError(f"controller {name} takes no argument" if not _ARGS[name]
                              else f"controller {name} takes only {' and '.join(_ARGS[name])} (got {self!r})")
        gamma = self.gamma if self.gamma is not None else _DEFAULT_GAMMA.get(name)
        if name == "fixed" and gamma is None:
            raise SpeckvError("controller fixed needs a gamma, e.g. fixed:4")
        if gamma is not None:
            if isinstance(gamma, bool) or not isinstance(gamma, int):
                raise SpeckvError(f"controller {name}: {gamma!r} is not an integer")
            if not 1 <= gamma <= MAX_GAMMA:
                if name in EXTERNAL:
                    raise _hf_assisted_range(f"{name}:{gamma}")
                raise SpeckvError(f"controller {name}: {gamma} is out of range [1, {MAX_GAMMA}]")
        object.__setattr__(self, "gamma", gamma)
        if name == "p-min":
            p = _DEFAULT_P_MIN if self.p_min is None else self.p_min
            if isinstance(p, bool) or not isinstance(p, (int, float)):
                raise SpeckvError(f"controller {name}: {p!r} is not a number")
            if not 0 <= p <= 1:
                raise SpeckvError(f"controller {name}: probability {p} is out of [0, 1]")
            object.__setattr__(self, "p_min", float(p))
        if self.artifact is not None:
            object.__setattr__(self, "artifact", Path(self.artifact))
        if name == "tree" and self.shape is None:
            object.__setattr__(self, "shape", TreeShape())

    @classmethod
    def parse(cls, text: str | ControllerSpec, *, allow_replay_only: bool = False,
              allow_external: bool = False) -> ControllerSpec:
        """Parse and validate a spec. By default only what our engine runs live is accepted:
        `allow_replay_only` also admits the oracle (speckv eval's replays), `allow_external` also
        hf-assisted[:N] (bench and eval methods). Raises SpeckvError, naming the spec."""
        if isinstance(text, ControllerSpec):
            spec = text
            if spec.external and not allow_external:
                raise _unknown(str(spec), external=False)
        elif isinstance(text, str):
            spec = cls._from_text(text, allow_external)
        else:
            raise SpeckvError(f"controller must be a spec such as 'fixed:4' (got {text!r})")
        if spec.replay_only and not allow_replay_only:
            raise SpeckvError("controller oracle knows the future: it runs only in replay (speckv eval)")
        return spec

    @classmethod
    def _from_text(cls, text: str, allow_external: bool) -> ControllerSpec:
        name, _, arg = text.strip().partition(":")
        if name not in _ARGS or name in EXTERNAL and not allow_external:
            raise _unknown(text, allow_external)
        if not arg:  # `name` and `name:` alike: the defaults
            return cls(name)
        if not _ARGS[name]:
            raise SpeckvError(f"controller {name} takes no argument")
        if name in ("cost-aware", "speckv", "heterospec", "cost-tree"):
            return cls(name, artifact=Path(arg))
        if name == "tree":
            return cls(name, shape=TreeShape.parse(arg))
        if name in EXTERNAL:
            if not (arg.isdigit() and 1 <= int(arg) <= MAX_GAMMA):
                raise _hf_assisted_range(text)
            return cls(name, gamma=int(arg))
        if name == "p-min":
            n, _, p = arg.partition(":")
            return cls(name, gamma=_int_arg(name, n) if n else None, p_min=_prob_arg(name, p) if p else None)
        return cls(name, gamma=_int_arg(name, arg))

    def __str__(self) -> str:
        """The canonical spec: ControllerSpec.parse(str(spec)) == spec."""
        if self.name == "p-min":
            return f"p-min:{self.gamma}:{_format_float(self.p_min)}"
        if self.gamma is not None:
            return f"{self.name}:{self.gamma}"
        if self.artifact is not None:
            return f"{self.name}:{self.artifact}"
        if self.shape is not None:
            return f"{self.name}:{self.shape}"
        return self.name

    @property
    def uses_draft(self) -> bool:
        """Whether it needs a draft model loaded (only the target alone does not)."""
        return self.name not in ("autoregressive", "hf-lookup", "llamacpp-server")

    @property
    def trees(self) -> bool:
        """Drafts token trees (needs a draft model on a backend that verifies trees)."""
        return self.name in ("tree", "heterospec", "cost-tree")

    @property
    def replayable(self) -> bool:
        """Runs in trace replay: not an external loop, and of the tree policies only spine-shaped
        fixed trees (beams rank off-path children, whose draft rows a trace does not hold): the
        others are evaluated live only."""
        return not self.external and (not self.trees or self.name == "tree" and self.shape.spine)

    @property
    def replay_only(self) -> bool:
        """Knows the trace it is replayed on (the oracle): never runs live."""
        return self.name == "oracle"

    @property
    def external(self) -> bool:
        """transformers' own loop (assisted generation, prompt lookup), not our engine: runs live
        only, never replayed."""
        return self.name in EXTERNAL

    @property
    def needs_artifact(self) -> bool:
        """Needs a trained artifact: the given file, or the setup's from `speckv train` (auto only
        uses one when present)."""
        return self.name in ("cost-aware", "speckv", "heterospec")
