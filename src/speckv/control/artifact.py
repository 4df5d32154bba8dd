"""Trained controller artifacts: small versioned JSON files, tied to the setup they were trained for.

A policy trained on one pair at one compression is wrong for another (acceptance and costs both
change), so an artifact records the pair, compression, device and its feature spec, and loading
it for a different setup is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from speckv.errors import SpeckvError
from speckv.files import write_json
from speckv.models.provision import cache_home

ARTIFACT_VERSION = 1


@dataclass(frozen=True)
class Setup:
    """What a controller runs for: the pair, both compression levels, the device."""

    target: str
    draft: str
    compression: str
    draft_compression: str = "bf16"
    device: str = "cpu"
    draft_vocab: int | None = None  # a reduced draft head's N most frequent tokens (None: the full head)
    backend: str = "torch"  # "torch" (transformers) or "llamacpp": the same weights cost differently

    def slug(self) -> str:
        head = f"-v{self.draft_vocab}" if self.draft_vocab else ""
        draft = f"{self.draft}-{self.draft_compression}{head}" if self.draft != "-" else "no-draft"
        backend = "" if self.backend == "torch" else f"--{self.backend}"  # torch slugs predate backends
        return f"{self.target}-{self.compression}--{draft}--{self.device}{backend}"


@dataclass
class Artifact:
    kind: str  # "cost-aware" | "speckv"
    setup: Setup
    features: list[str]
    params: dict
    trained_on: dict = field(default_factory=dict)  # prompt ids, counts: what it has seen
    version: int = ARTIFACT_VERSION

    def save(self, path: Path) -> Path:
        return write_json(path, asdict(self))


def default_path(kind: str, setup: Setup) -> Path:
    """Where `speckv train` puts an artifact for this setup."""
    return cache_home() / "controllers" / f"{kind}--{setup.slug()}.json"


def shipped_path(kind: str, setup: Setup) -> Path:
    """Where the package ships an artifact for this setup (the built-in pair on CPU): what `auto`
    uses before any `speckv train` on the user's machine. Made by scripts/ship_artifacts.py."""
    return Path(__file__).parent / "shipped" / f"{kind}--{setup.slug()}.json"


def load_artifact(path: Path, kind: str, features: list[str], setup: Setup | None = None) -> Artifact:
    """Read an artifact and refuse it unless kind, version, features and (if given) setup match."""
    try:
        data = json.loads(Path(path).read_text())
        art = Artifact(**{**data, "setup": Setup(**data["setup"])})
    except FileNotFoundError:
        raise SpeckvError(f"{path}: no such controller artifact") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise SpeckvError(f"{path}: not a speckv controller artifact ({type(exc).__name__})") from None
    if art.version != ARTIFACT_VERSION:
        raise SpeckvError(f"{path}: artifact version {art.version} (this speckv reads {ARTIFACT_VERSION})")
    if art.kind != kind:
        raise SpeckvError(f"{path}: a {art.kind} artifact, not {kind}")
    if art.features != features:
        raise SpeckvError(f"{path}: features {art.features} differ from this speckv's {features}")
    if setup is not None and art.setup != setup:
        diff = ", ".join(f"{k} {getattr(art.setup, k)} != {getattr(setup, k)}" for k in asdict(setup)
                         if getattr(art.setup, k) != getattr(setup, k))
        raise SpeckvError(f"{path}: trained for another setup ({diff}); retrain with `speckv train`")
    return art
