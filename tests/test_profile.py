"""Profiler on SmolLM2 (draft = target): record schema, resume after interruption, refusals."""

import pandas as pd
import pytest

from speckv.errors import SpeckvError
from speckv.measure.profile import SPECKV_RUN_COLUMNS, SPECKV_STEP_COLUMNS, ProfileConfig, load_records, run_profile

SMOL = "smollm2-135m-instruct"
CONFIG = ProfileConfig(tasks=("code", "chat"), gammas=(2,), compressions=("bf16",), prompts_per_task=2,
                       max_new_tokens=6, target=SMOL, draft=SMOL)


class Interrupt:
    """A progress sink that presses Ctrl-C after `after` finished units."""

    def __init__(self, after: int):
        self.after, self.done = after, 0

    def start(self, total, done):
        self.total = total

    def advance(self):
        self.done += 1
        if self.done >= self.after:
            raise KeyboardInterrupt


def test_schema_is_a_superset_of_speckv(tmp_path):
    run_profile(CONFIG, tmp_path, csv=True)
    steps, runs = load_records(tmp_path)
    assert set(SPECKV_STEP_COLUMNS) <= set(steps.columns)
    assert set(SPECKV_RUN_COLUMNS) <= set(runs.columns)
    assert {"prompt_id", "context_len", "draft_ms", "verify_ms", "control_ms", "draft_entropies",
            "target", "draft", "torch", "device", "threads"} <= set(steps.columns)
    assert sorted(runs.gamma.unique()) == [0, 2] and len(runs) == 4 * 2
    spec = steps[steps.gamma == 2]
    assert (spec.accepted <= spec.drafted).all() and (spec.drafted <= 2).all()
    assert (spec.draft_entropies.map(len) == spec.drafted).all()
    assert (tmp_path / "steps.csv").is_file() and len(pd.read_csv(tmp_path / "runs.csv")) == len(runs)


def test_resume_after_interruption_redoes_only_the_missing_units(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_profile(CONFIG, tmp_path, progress=Interrupt(after=1))
    first = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(first) == 1 and not list(tmp_path.rglob("*.tmp"))
    stamp = (tmp_path / "runs" / first[0]).stat().st_mtime_ns
    assert run_profile(CONFIG, tmp_path) == 3
    assert (tmp_path / "runs" / first[0]).stat().st_mtime_ns == stamp
    assert run_profile(CONFIG, tmp_path) == 0


def test_directory_of_another_pair_is_refused(tmp_path):
    run_profile(ProfileConfig(tasks=("chat",), gammas=(2,), compressions=("bf16",), prompts_per_task=1,
                              max_new_tokens=2, target=SMOL, draft=SMOL), tmp_path)
    other = ProfileConfig(tasks=("chat",), gammas=(2,), compressions=("bf16",), prompts_per_task=1,
                          max_new_tokens=3, target=SMOL, draft=SMOL)
    with pytest.raises(SpeckvError, match="another setup"):
        run_profile(other, tmp_path)


def test_unreadable_records_are_named(tmp_path):
    (tmp_path / "steps").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "steps" / "bad.parquet").write_bytes(b"not parquet")
    (tmp_path / "runs" / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(SpeckvError, match="bad.parquet"):
        load_records(tmp_path)


def test_report_writes_figures_and_page(tmp_path):
    from speckv.report.page import build

    run_profile(CONFIG, tmp_path)
    reference = tmp_path / "ref" / "phase2_step_results.csv"
    reference.parent.mkdir()
    reference.with_name("phase2_optimal_gamma.csv").write_text("compression,task,optimal_gamma,best_tps\nfp16,chat,6,61.5\n")
    reference.with_name("paper_numbers.json").write_text('{"feature_importance": {"min_draft_confidence": 0.3}}')
    page = build(tmp_path, tmp_path / "report", reference)
    text = page.read_text()
    assert "best fixed gamma" in text and "speckv_best_gamma" in text and "target_1_tokens" in text
    assert "SpecKV published feature importance" in text and "0.300" in text
    pngs = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert {"tokens_per_s_vs_gamma.png", "acceptance_heatmaps.png", "best_gamma_shift.png", "costs.png"} <= pngs


def test_report_cli_refuses_unreadable_records(tmp_path, monkeypatch, capsys):
    import sys

    from speckv.cli import main

    (tmp_path / "steps").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "steps" / "x.parquet").write_bytes(b"junk")
    (tmp_path / "runs" / "x.parquet").write_bytes(b"junk")
    monkeypatch.setattr(sys, "argv", ["speckv", "report", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "x.parquet" in capsys.readouterr().err
