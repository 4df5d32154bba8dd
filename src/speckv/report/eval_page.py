"""Evaluation page over runs.parquet / steps.parquet: controller throughput, stop lengths, speedup CIs."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from speckv.errors import SpeckvError
from speckv.files import ensure_dir, read_parquet
from speckv.cost import CostModel
from speckv.measure.stats import comparison_table, headline
from speckv.measure.validate import session_cost_table, validation_table
from speckv.report.page import _per_compression, _save, _table, write_page  # sets matplotlib's Agg backend

RUN_COLUMNS = ("mode", "controller", "compression", "task", "prompt_id", "new_tokens", "wall_s")
STEP_COLUMNS = ("mode", "controller", "compression", "drafted")


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    return read_parquet(path, columns, "evaluation results")


def figures(runs: pd.DataFrame, steps: pd.DataFrame, table: pd.DataFrame, primary: str,
            out: Path) -> list[tuple[str, Path]]:
    levels = sorted(runs["compression"].unique())
    controllers = sorted(runs["controller"].unique())
    pooled = table[table["task"] == "all"]
    made = []

    fig, axes = _per_compression(levels)
    x = np.arange(len(controllers))
    for level, ax in axes.items():
        for offset, mode, hatch in ((-0.2, "live", ""), (0.2, "replay", "//")):
            tps = pooled[(pooled["compression"] == level) & (pooled["mode"] == mode)].set_index("controller")
            ax.bar(x + offset, tps["tokens_per_s"].reindex(controllers), 0.4, hatch=hatch, label=mode,
                   edgecolor="k", color="C0" if mode == "live" else "C1")
        ax.set(title=f"target {level}", ylabel="aggregate tokens/s", xticks=x)
        ax.set_xticklabels(controllers, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=7)
    made.append(("Policy comparison: aggregate tokens/s (replay hatched)", _save(fig, out / "policy_comparison.png")))

    fig, axes = _per_compression(levels)
    mine = steps[steps["mode"] == primary]
    for level, ax in axes.items():
        at = mine[mine["compression"] == level]
        names = sorted(at["controller"].unique())
        if names:
            ax.boxplot([at.loc[at["controller"] == c, "drafted"] for c in names], tick_labels=names)
        ax.set(title=f"target {level} ({primary})", ylabel="drafted tokens per step")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    made.append(("Stop length: drafted tokens per step", _save(fig, out / "drafted_per_step.png")))

    fig, axes = _per_compression(levels)
    for level, ax in axes.items():
        ci = pooled[(pooled["compression"] == level) & (pooled["mode"] == primary)]
        y = np.arange(len(ci))
        err = np.clip(np.vstack([ci["speedup"] - ci["ci_low"], ci["ci_high"] - ci["speedup"]]), 0, None)
        ax.errorbar(ci["speedup"], y, xerr=err, fmt="o", capsize=3)
        ax.axvline(1.0, color="grey", linestyle="--")
        ax.set(title=f"target {level} ({primary})", xlabel="speedup vs baseline (95% CI)", yticks=y)
        ax.set_yticklabels(ci["controller"], fontsize=8)
    made.append(("Speedup over the baseline with 95% paired-bootstrap CI", _save(fig, out / "speedup_ci.png")))
    return made


def build(results_dir: Path, out: Path | None = None, baseline: str = "fixed:4") -> Path:
    """Write PNGs and eval.html under out (default results_dir); returns the HTML path."""
    runs = _read(results_dir / "runs.parquet", RUN_COLUMNS)
    steps = _read(results_dir / "steps.parquet", STEP_COLUMNS)
    if runs.empty:
        raise SpeckvError(f"{results_dir / 'runs.parquet'} has no runs")
    out = out or results_dir
    ensure_dir(out)
    modes = sorted(runs["mode"].unique())
    primary = "live" if "live" in modes else modes[0]
    table = comparison_table(runs, baseline)
    made = figures(runs, steps, table, primary, out)

    parts = [
        "<html><head><meta charset='utf-8'><title>speckv evaluation</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table.t td,table.t th{padding:2px 8px}"
        "</style></head><body><h1>speckv evaluation</h1>",
        f"<p>{len(runs)} runs, {len(steps)} steps, {runs['prompt_id'].nunique()} prompt ids, "
        f"{runs['controller'].nunique()} controllers; baseline {html.escape(baseline)}; speedup is the ratio of "
        "aggregate tokens/s (sum of tokens / sum of seconds) on shared prompts, CI from a paired bootstrap over "
        f"prompts. CI chart and stop lengths use {primary} runs.</p>",
    ]
    for mode in modes:
        shown = table[table["mode"] == mode].drop(columns="mode").set_index(["compression", "task", "controller"])
        parts.append(f"<h2>Comparison vs {html.escape(baseline)} ({html.escape(str(mode))})</h2>{_table(shown)}")
    top = headline(runs)
    if not top.empty:
        parts.append("<h2>cost-aware (live) against the baselines</h2><p>ratio of aggregate tokens/s on shared "
                     "prompts with a paired-bootstrap 95% CI; the oracle row is against its replayed tokens/s.</p>"
                     + _table(top.set_index(["compression", "versus"])))
    check = validation_table(runs, steps)
    if not check.empty:
        parts.append("<h2>Replay vs live</h2><p>predicted_over_live: the cost model's tokens/s on the replayed "
                     "steps over the measured live tokens/s; steps_equal: share of prompts whose replayed (budget, "
                     "drafted, accepted) sequence equals the live one; identical_output: live output equal to the "
                     "target's own greedy output.</p>" + _table(check.set_index(["compression", "controller"])))
    session = session_cost_table(runs, steps, calibrated_models(results_dir))
    if not session.empty:
        parts.append("<h2>Cost model vs live</h2><p>Predicted over live tokens/s on the replayed steps: "
                     "<i>calibrated</i> uses the model fitted by <code>speckv calibrate</code> before the evaluation; "
                     "<i>refit</i> refits it on this evaluation's live runs leaving the predicted prompt out "
                     "(same machine conditions, out of sample in the prompt); <i>refit_live_steps</i> applies the "
                     "refit to the live steps (cost error without replay's step differences).</p>"
                     + _table(session.set_index(["compression", "controller"])))
    return write_page(out / "eval.html", parts, made)


def calibrated_models(results_dir: Path) -> dict[str, CostModel]:
    """The cost models `speckv eval` copied under results_dir/cost/, by compression."""
    return {p.stem: CostModel.load(p) for p in sorted((results_dir / "cost").glob("*.json"))}
