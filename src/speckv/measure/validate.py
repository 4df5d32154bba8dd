"""How far the replayed numbers can be trusted, checked against the live runs of the same evaluation.

Two questions: does replay take the steps the live engine took (exact in fp32; bf16/int8/nf4 batched
rounding may differ), and does the cost model predict live tokens/s? A model calibrated before the
evaluation carries that moment's machine speed (which drifts by 10-20% over tens of minutes on a shared
CPU), so we also refit it inside the evaluation, leaving one prompt out at a time: fit on the live step
records of every other prompt, predict the held-out prompt's replayed steps. That is out of sample in the
prompt and in time-of-day noise, and it is what a cost model fitted on this session can promise.
"""

from __future__ import annotations

import math

import pandas as pd

from speckv.cost import CalibrationRun, CostModel
from speckv.records import StepRecord

_STEP_FIELDS = ("step", "context_len", "budget", "drafted", "accepted", "emitted", "draft_ms", "verify_ms", "control_ms")


def validation_table(runs: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """How far replay can be trusted, per compression x controller: the cost model's predicted
    tokens/s over the live one, and the share of prompts whose replayed steps (budget, drafted,
    accepted) equal the live ones (exact in fp32; bf16/int8/nf4 batched rounding may differ)."""
    key = ["compression", "controller", "prompt_id"]
    live, rep = runs[runs["mode"] == "live"], runs[runs["mode"] == "replay"]
    both = live.merge(rep.drop(columns="identical", errors="ignore"), on=key, suffixes=("_live", "_replay"))
    if both.empty:
        return pd.DataFrame()
    shape = (steps.sort_values("step").groupby(["mode", *key])[["budget", "drafted", "accepted"]]
             .apply(lambda g: tuple(map(tuple, g.to_numpy()))))
    same = [shape.get(("live", *k)) == shape.get(("replay", *k)) for k in both[key].itertuples(index=False)]
    both = both.assign(steps_equal=same)
    rows = []
    for (comp, ctrl), g in both.groupby(["compression", "controller"]):
        live_tps = g.new_tokens_live.sum() / g.wall_s_live.sum()
        pred_tps = g.new_tokens_replay.sum() / g.wall_s_replay.sum()
        rows.append({"compression": comp, "controller": ctrl, "live_tokens_per_s": live_tps,
                     "predicted_tokens_per_s": pred_tps, "predicted_over_live": pred_tps / live_tps,
                     "steps_equal": float(g.steps_equal.mean()),
                     "identical_output": float(g.identical.mean()) if "identical" in g else float("nan"),
                     "n_prompts": len(g)})
    return pd.DataFrame(rows)


def _records(steps: pd.DataFrame) -> list[StepRecord]:
    rows = steps.sort_values("step")[list(_STEP_FIELDS)].itertuples(index=False)
    return [StepRecord(**dict(zip(_STEP_FIELDS, row))) for row in rows]


def _live_runs(runs: pd.DataFrame, steps: pd.DataFrame, fallback: CostModel) -> dict[tuple[str, str], CalibrationRun]:
    """Live runs with step records, as calibration runs keyed by (controller, prompt). The prompt length
    is the first step's context; prefill comes from the run row, or from `fallback` for older records."""
    by_run = {k: g for k, g in steps[steps["mode"] == "live"].groupby(["controller", "prompt_id"])}
    out = {}
    for row in runs[runs["mode"] == "live"].to_dict("records"):
        key = (row["controller"], row["prompt_id"])
        if key not in by_run:  # transformers' assisted generation has no step records
            continue
        records = _records(by_run[key])
        prompt_len = records[0].context_len
        prefill = row.get("prefill_ms", math.nan)
        if not math.isfinite(prefill):
            prefill = fallback.prefill_ms(prompt_len)
        out[key] = CalibrationRun(prompt_len, records, row["wall_s"], prefill)
    return out


def _session_cost_rows(runs: pd.DataFrame, steps: pd.DataFrame, calibrated: CostModel) -> list[dict]:
    """Per controller: live tokens/s, and predicted over live tokens/s for the replayed steps under the
    model calibrated before the evaluation and under a leave-one-prompt-out refit on this evaluation's
    live runs; `refit_live_steps` applies the refit to the live steps themselves (the cost model's error
    alone, without replay's step differences)."""
    live = _live_runs(runs, steps, calibrated)
    replayed = {k: _records(g) for k, g in steps[steps["mode"] == "replay"].groupby(["controller", "prompt_id"])}
    tokens = runs.set_index(["mode", "controller", "prompt_id"])["new_tokens"]
    prompts = sorted({p for _, p in live})
    sums: dict[str, list[float]] = {}
    for prompt in prompts:
        others = [run for (_, p), run in live.items() if p != prompt]
        if len(others) < 2:
            continue
        refit = CostModel.fit(others)
        for (controller, p), run in live.items():
            if p != prompt or (controller, p) not in replayed:
                continue
            rep, n = replayed[controller, p], run.prompt_len
            acc = sums.setdefault(controller, [0.0] * 6)
            for i, v in enumerate((tokens["live", controller, p], run.wall_s, tokens["replay", controller, p],
                                   calibrated.wall_s(rep, n), refit.wall_s(rep, n), refit.wall_s(run.steps, n))):
                acc[i] += v
    rows = []
    for controller, (live_tok, live_s, rep_tok, cal_s, refit_s, refit_live_s) in sorted(sums.items()):
        live_tps = live_tok / live_s
        rows.append({"controller": controller, "live_tokens_per_s": live_tps,
                     "calibrated_over_live": rep_tok / cal_s / live_tps, "refit_over_live": rep_tok / refit_s / live_tps,
                     "refit_live_steps": live_tok / refit_live_s / live_tps, "n_prompts": len(prompts)})
    return rows


def session_cost_table(runs: pd.DataFrame, steps: pd.DataFrame, calibrated: dict[str, CostModel]) -> pd.DataFrame:
    """The cost model's predicted over live tokens/s per compression x controller, before and after a
    leave-one-prompt-out refit on the evaluation's own live runs (levels without a calibrated model skipped)."""
    rows = []
    for level, model in sorted(calibrated.items()):
        at = runs["compression"] == level
        rows += [{"compression": level, **r}
                 for r in _session_cost_rows(runs[at], steps[steps["compression"] == level], model)]
    return pd.DataFrame(rows)
