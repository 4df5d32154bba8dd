"""`speckv report DIR`: figures as PNG and one self-contained HTML page (images inlined)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from speckv.files import atomic_write, ensure_dir, write_text  # noqa: E402
from speckv.measure.profile import load_records  # noqa: E402
from speckv.report import analysis  # noqa: E402


def _save(fig, path: Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _per_compression(levels, width=4.2):
    fig, axes = plt.subplots(1, len(levels), figsize=(width * len(levels), 3.4), squeeze=False)
    return fig, dict(zip(levels, axes[0]))


def figures(steps: pd.DataFrame, runs: pd.DataFrame, tokens: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    levels = sorted(runs.compression.unique())
    made = []

    fig, axes = _per_compression(levels)
    tps = analysis.throughput(runs)
    for level, ax in axes.items():
        for task, g in tps[tps.compression == level].groupby("task"):
            ax.plot(g.gamma, g.tokens_per_s, marker="o", label=task)
        ax.set(title=f"target {level}", xlabel="gamma (0 = target alone)", ylabel="tokens/s")
        ax.legend(fontsize=7)
    made.append(("Wall-clock tokens/s vs gamma", _save(fig, out / "tokens_per_s_vs_gamma.png")))

    acc = analysis.acceptance_table(steps)
    if not acc.empty:
        fig, axes = _per_compression(levels)
        for level, ax in axes.items():
            grid = acc[acc.compression == level].pivot(index="task", columns="gamma", values="acceptance")
            im = ax.imshow(grid.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set(title=f"acceptance, target {level}", xticks=range(len(grid.columns)), xticklabels=grid.columns,
                   yticks=range(len(grid.index)), yticklabels=grid.index, xlabel="gamma")
            for (i, j), v in pd.DataFrame(grid.values).stack().items():
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=list(axes.values()))
        made.append(("Acceptance rate, task x gamma", _save(fig, out / "acceptance_heatmaps.png")))

    best = analysis.best_gamma(runs)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for task, g in best.groupby("task"):
        ax.plot(g.compression, g.best_gamma, marker="o", label=task)
    ax.set(title="Wall-clock best gamma across compression levels", ylabel="best gamma (0 = don't speculate)")
    ax.legend(fontsize=7)
    made.append(("Best gamma shift across compression", _save(fig, out / "best_gamma_shift.png")))

    if not tokens.empty:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for signal, ax in zip(("entropy", "confidence"), axes):
            for level, g in tokens.groupby("compression"):
                bins = pd.qcut(g[signal], 10, duplicates="drop")
                curve = g.groupby(bins, observed=True).agg(x=(signal, "mean"), p=("accepted", "mean"))
                ax.plot(curve.x, curve.p, marker="o", label=level)
            ax.set(xlabel=f"draft {signal}", ylabel="P(accepted)", title=f"acceptance vs draft {signal}")
            ax.legend(fontsize=7)
        made.append(("Per-token acceptance vs draft signals", _save(fig, out / "acceptance_vs_signals.png")))

    spec = steps[steps.drafted > 0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for level, g in spec.groupby("compression"):
        axes[0].scatter(g.drafted + 1, g.verify_ms, s=6, alpha=0.4, label=level)
    axes[0].set(xlabel="tokens verified in one target forward", ylabel="verify ms", title="verification cost")
    cost = analysis.costs(steps)
    frame = pd.DataFrame({"per draft token": cost.draft_ms_per_token, "per target forward": cost.verify_ms_target_alone})
    frame.plot.bar(ax=axes[1], rot=0, title="ms: draft token vs target forward")
    axes[0].legend(fontsize=7)
    made.append(("Cost per draft token vs per verification", _save(fig, out / "costs.png")))
    return made


def write_page(page: Path, parts: list[str], figures: list[tuple[str, Path]]) -> Path:
    """Finish an HTML page with its figures inlined (self-contained) and write it atomically."""
    for title, png in figures:
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}' style='max-width:100%'>")
    parts.append("</body></html>")
    return write_text(page, "\n".join(parts))


def _table(df: pd.DataFrame) -> str:
    return df.to_html(float_format=lambda v: f"{v:.3f}", border=0, classes="t")


def build(records: Path, out: Path, speckv_reference: Path | None = None) -> Path:
    """Write PNGs and report.html under out; returns the HTML path."""
    steps, runs = load_records(records)
    ensure_dir(out)
    tokens = analysis.token_outcomes(steps)
    made = figures(steps, runs, tokens, out)

    ours_corr = analysis.step_correlations(steps).rename("ours (Spearman, step level)")
    signal = ours_corr.to_frame()
    if speckv_reference and speckv_reference.is_file():
        theirs = pd.read_csv(speckv_reference)
        signal["SpecKV data, same computation"] = analysis.step_correlations(theirs)
    numbers = speckv_reference.with_name("paper_numbers.json") if speckv_reference else None
    if numbers and numbers.is_file():  # the paper's own ranking of the same signals
        signal["SpecKV published feature importance"] = pd.Series(json.loads(numbers.read_text())["feature_importance"])
    auc = tokens.groupby("compression").apply(analysis.token_auc, include_groups=False) if not tokens.empty else pd.DataFrame()
    best = analysis.best_gamma(runs)
    published = speckv_reference.with_name("phase2_optimal_gamma.csv") if speckv_reference else None
    if published and published.is_file():
        best = analysis.best_gamma_beside(best, pd.read_csv(published))
    sections = [
        ("Wall-clock best fixed gamma per compression x task (SpecKV's published best beside it)", _table(best)),
        ("Draft signals vs acceptance: step-level correlation, ours beside SpecKV's", _table(signal)),
        ("Per-token ROC AUC of each signal for acceptance (tokens up to the first rejection)", _table(auc)),
        ("Measured costs (median ms)", _table(analysis.costs(steps))),
        ("Target forward latency (median ms) by tokens verified", _table(analysis.verify_latency(steps))),
    ]
    meta = runs.iloc[0]
    parts = [
        "<html><head><meta charset='utf-8'><title>speckv profile report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table.t td,table.t th{padding:2px 8px}"
        "</style></head><body><h1>speckv profile report</h1>",
        f"<p>target {html.escape(str(meta.target))}, draft {html.escape(str(meta.draft))} ({meta.draft_compression}); "
        f"{len(runs)} runs, {len(steps)} steps, {runs.prompt_id.nunique()} prompts; device {meta.device}, "
        f"{meta.threads} threads, torch {meta.torch}, transformers {meta.transformers}.</p>",
    ]
    for title, body in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    return write_page(out / "report.html", parts, made)
