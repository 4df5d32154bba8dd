"""Shipped data: found through the package, never beside the checkout (a user's clone has nothing there)."""

from __future__ import annotations

import re
from pathlib import Path

import speckv
from speckv.data.bundled import SPECKV_REFERENCE, bundled
from speckv.data.prompts import spec_bench, spec_bench_path
from speckv.data.tasks import TASKS, task_pool

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(speckv.__file__).resolve().parent


def test_spec_bench_ships_inside_the_package():
    assert PACKAGE in spec_bench_path().resolve().parents
    prompts = spec_bench()
    assert len(prompts) == 480 and len({p.category for p in prompts}) == 13
    assert (spec_bench_path().parent / "LICENSE").read_text().startswith("Apache License") or \
        "Apache License" in (spec_bench_path().parent / "LICENSE").read_text()[:200]
    for task in TASKS:  # every task of the profile and the evaluation draws from shipped data
        assert task_pool(task)


def test_speckv_reference_ships_with_its_license():
    ref = bundled(SPECKV_REFERENCE)
    assert PACKAGE in ref.resolve().parents
    assert (ref / "phase2_step_results.csv").stat().st_size > 100_000
    assert "MIT License" in (ref / "LICENSE").read_text()
    notice = (ROOT / "NOTICE").read_text()
    assert "Spec-Bench" in notice and "SpecKV" in notice and "Apache" in notice


def test_nothing_reads_beside_the_checkout():
    """No source, test or script names ../shared: CI runs in a clone with nothing beside it."""
    pattern = re.compile(r"\.\./shared|[\"'/]shared/(data|reference)")
    files = [p for folder in ("src", "tests", "scripts", "benchmarks") for p in (ROOT / folder).rglob("*")
             if p.suffix in {".py", ".sh"} and p.name != "test_data.py"] + [ROOT / ".ci" / "run"]
    offenders = [str(p.relative_to(ROOT)) for p in files if pattern.search(p.read_text(errors="ignore"))]
    assert offenders == []


def test_ci_runs_the_readme_test_command():
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"\n{command}\n" in readme and f"\n{command}\n" in ci
    assert "git clone" in ci and "mktemp -d" in ci  # the fresh clone in an empty directory
