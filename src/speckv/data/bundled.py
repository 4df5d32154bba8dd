"""Data files shipped inside the package, found through the package itself.

Invariant: nothing here looks outside the installed `speckv` package: a user's clone (or a
wheel) has nothing beside it. Licenses travel with the files (see NOTICE at the repo root).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from speckv.errors import SpeckvError

#: Spec-Bench questions (Apache-2.0, hemingkx/Spec-Bench): 480 prompts in 13 categories.
SPEC_BENCH = "spec_bench/question.jsonl"
#: SpecKV's published step records and tables (MIT, Amorfati123/SpecKV).
SPECKV_REFERENCE = "reference/speckv"


def bundled(relative: str) -> Path:
    """Path of a file or folder under speckv/data; a missing one means a broken install."""
    path = Path(str(files("speckv.data").joinpath(relative)))
    if not path.exists():
        raise SpeckvError(f"packaged data {relative} is missing from {path.parent}; reinstall speckv")
    return path
