"""Throughput comparisons with paired bootstrap confidence intervals over prompts.

Throughput is a ratio of sums (all new tokens / all wall seconds), not a mean of per-run rates, so a
short fast prompt does not weigh as much as a long one. Prompts are the unit of independence: steps
within a prompt share context and are correlated, so we resample prompts, not steps. The resampling is
paired (the same prompt draw for both controllers) because every controller ran the same prompts, which
removes the large prompt-to-prompt variation in speed from the ratio's uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from speckv.errors import SpeckvError


@dataclass(frozen=True)
class RatioCI:
    ratio: float
    low: float
    high: float
    n_prompts: int


def aggregate_tps(runs: pd.DataFrame) -> float:
    """Total new tokens / total wall seconds (NaN when there is no wall time)."""
    wall = float(runs["wall_s"].sum())
    return float(runs["new_tokens"].sum()) / wall if wall > 0 else float("nan")


def _per_prompt(runs: pd.DataFrame, controller: str, columns: tuple[str, str] = ("new_tokens", "wall_s")) -> pd.DataFrame:
    sel = runs[runs["controller"] == controller]
    if sel.empty:
        raise SpeckvError(f"no runs for controller {controller!r}")
    return sel.groupby("prompt_id")[list(columns)].sum()


def paired_ratio_ci(runs: pd.DataFrame, a: str, b: str, n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> RatioCI:
    """Aggregate tokens/s of a over b on their shared prompts, with a paired percentile bootstrap CI."""
    return paired_ci(runs, a, b, "new_tokens", "wall_s", n_boot, seed, level)


def paired_ci(runs: pd.DataFrame, a: str, b: str, num: str, den: str, n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> RatioCI:
    """(sum num / sum den) of a over the same of b on their shared prompts (tokens/s, accepted
    per step, ms per token...), with a paired percentile bootstrap CI over prompts."""
    pa, pb = _per_prompt(runs, a, (num, den)), _per_prompt(runs, b, (num, den))
    shared = pa.index.intersection(pb.index).sort_values()
    if shared.empty:
        raise SpeckvError(f"controllers {a!r} and {b!r} share no prompts")
    # rows: num a, den a, num b, den b; one column per shared prompt
    sums = np.vstack([pa.loc[shared].to_numpy(float).T, pb.loc[shared].to_numpy(float).T])
    idx = np.random.default_rng(seed).integers(0, len(shared), size=(n_boot, len(shared)))
    boot = np.take(sums, idx, axis=1).sum(axis=2)  # (4, n_boot)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (boot[0] / boot[1]) / (boot[2] / boot[3])
    low, high = np.nanquantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    total = sums.sum(axis=1)
    return RatioCI(float((total[0] / total[1]) / (total[2] / total[3])), float(low), float(high), len(shared))


def comparison_table(runs: pd.DataFrame, baseline: str, by: Sequence[str] = ("mode", "compression", "task"),
                     n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per group and controller: aggregate tokens/s, mean acceptance, speedup over baseline with CI.

    With "task" in `by`, each group also gets a task "all" row that pools the tasks (prompts keyed by
    task, so equal prompt ids in different tasks stay distinct). Groups without the baseline get NaN speedup.
    """
    keys = [c for c in by if c in runs.columns]
    frames = [runs]
    if "task" in keys:
        frames.append(runs.assign(prompt_id=runs["task"].astype(str) + "/" + runs["prompt_id"].astype(str),
                                  task="all"))
    pooled = pd.concat(frames, ignore_index=True)
    groups = pooled.groupby(keys, dropna=False) if keys else [((), pooled)]
    rows = []
    for key, group in groups:
        has_baseline = (group["controller"] == baseline).any()
        for controller in sorted(group["controller"].unique()):
            sel = group[group["controller"] == controller]
            ci = paired_ratio_ci(group, controller, baseline, n_boot, seed) if has_baseline else None
            rows.append({
                **dict(zip(keys, key)),
                "controller": controller,
                "tokens_per_s": aggregate_tps(sel),
                "mean_accepted": sel["mean_accepted"].mean() if "mean_accepted" in sel else float("nan"),
                "speedup": ci.ratio if ci else float("nan"),
                "ci_low": ci.low if ci else float("nan"),
                "ci_high": ci.high if ci else float("nan"),
                "n_prompts": sel["prompt_id"].nunique(),
            })
    table = pd.DataFrame(rows, columns=[*keys, "controller", "tokens_per_s", "mean_accepted", "speedup",
                                        "ci_low", "ci_high", "n_prompts"])
    return table.sort_values([*keys, "controller"], kind="stable", ignore_index=True)


def headline(runs: pd.DataFrame, focus: str = "cost-aware",
             versus: Sequence[str] = ("fixed:4", "hf-assisted", "speckv", "autoregressive")) -> pd.DataFrame:
    """The acceptance figures per compression: `focus` live tokens/s over each live baseline (paired
    CI over prompts), and over the oracle's *replayed* tokens/s (the pair's physical limit)."""
    rows = []
    for comp, g in runs.groupby("compression"):
        live = g[g["mode"] == "live"]
        oracle = g[(g["mode"] == "replay") & (g["controller"] == "oracle")].assign(controller="oracle (replay)")
        pool = pd.concat([live, oracle])
        if focus not in set(live["controller"]):
            continue
        for other in (*versus, "oracle (replay)"):
            if other not in set(pool["controller"]):
                continue
            ci = paired_ratio_ci(pool, focus, other)
            rows.append({"compression": comp, "controller": focus, "versus": other, "ratio": ci.ratio,
                         "ci_low": ci.low, "ci_high": ci.high, "n_prompts": ci.n_prompts})
    return pd.DataFrame(rows)


def live_summary(runs: pd.DataFrame, labels: Sequence[str], pairs: Sequence[tuple[str, str]]) -> dict:
    """What a live side-by-side benchmark reports, from its rows (controller, prompt_id, task,
    new_tokens, wall_s, tokens): aggregate tokens/s per method and per task, paired CIs for `pairs`
    (a over b), and how often each method's output equals the target alone's (`autoregressive`)."""
    by = {m: runs[runs.controller == m] for m in labels}
    out = {"tokens_per_s": {m: round(aggregate_tps(r), 2) for m, r in by.items()},
           "per_task": {t: {m: round(aggregate_tps(r[r.task == t]), 2) for m, r in by.items()}
                        for t in dict.fromkeys(runs.task)},
           "ratio_ci": {}}
    for a, b in pairs:
        if a in labels and b in labels:
            ci = paired_ratio_ci(runs, a, b)
            out["ratio_ci"][f"{a} / {b}"] = [round(ci.ratio, 3), round(ci.low, 3), round(ci.high, 3)]
    if "autoregressive" in labels:
        alone = by["autoregressive"].set_index("prompt_id")["tokens"]
        prompts = runs.prompt_id.nunique()
        out["same_output_as_autoregressive"] = {
            m: round(float(sum(list(x.tokens) == list(alone[x.prompt_id]) for x in r.itertuples()) / prompts), 3)
            for m, r in by.items()}
    return out
