"""Numbers the report states, as pure functions of record tables (ours or SpecKV's)."""

from __future__ import annotations

import numpy as np
import pandas as pd

STEP_SIGNALS = ["mean_draft_entropy", "max_draft_entropy", "mean_draft_confidence", "min_draft_confidence"]


def best_gamma(runs: pd.DataFrame) -> pd.DataFrame:
    """Wall-clock best fixed gamma per compression x task (gamma 0 = don't speculate)."""
    tps = throughput(runs)
    best = tps.loc[tps.groupby(["compression", "task"]).tokens_per_s.idxmax()]
    base = tps[tps.gamma == 0].set_index(["compression", "task"]).tokens_per_s
    best = best.set_index(["compression", "task"])
    best["speedup_vs_target_alone"] = best.tokens_per_s / base.reindex(best.index)
    return best.reset_index().rename(columns={"gamma": "best_gamma"})


def throughput(runs: pd.DataFrame) -> pd.DataFrame:
    """Tokens/s per compression x task x gamma: total tokens over total time, not a mean of rates."""
    return runs.groupby(["compression", "task", "gamma"]).apply(
        lambda g: g.new_tokens.sum() / g.wall_s.sum(), include_groups=False).rename("tokens_per_s").reset_index()


def acceptance_table(steps: pd.DataFrame) -> pd.DataFrame:
    spec = steps[steps.gamma > 0]
    return spec.groupby(["compression", "task", "gamma"]).acceptance_rate.mean().rename("acceptance").reset_index()


def step_correlations(steps: pd.DataFrame) -> pd.Series:
    """Spearman correlation of each step-level draft signal with the step's acceptance rate."""
    spec = steps[steps.gamma > 0].dropna(subset=["acceptance_rate"])
    return pd.Series({s: spec[s].corr(spec.acceptance_rate, method="spearman") for s in STEP_SIGNALS})


def token_outcomes(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per drafted token whose fate is known: accepted, or the first rejected one."""
    rows = []
    for r in steps[steps.drafted > 0].itertuples():
        known = min(r.accepted + 1, r.drafted)
        for i in range(known):
            rows.append((r.compression, r.task, r.draft_entropies[i], r.draft_confidences[i], r.draft_margins[i], i < r.accepted))
    return pd.DataFrame(rows, columns=["compression", "task", "entropy", "confidence", "margin", "accepted"])


def token_auc(tokens: pd.DataFrame) -> pd.Series:
    """ROC AUC of each per-token signal for predicting acceptance (entropy negated: low = good)."""
    from sklearn.metrics import roc_auc_score

    y = tokens.accepted.astype(int)
    if y.nunique() < 2:
        return pd.Series({"entropy": np.nan, "confidence": np.nan, "margin": np.nan})
    return pd.Series({
        "entropy": roc_auc_score(y, -tokens.entropy),
        "confidence": roc_auc_score(y, tokens.confidence),
        "margin": roc_auc_score(y, tokens.margin),
    })


def costs(steps: pd.DataFrame) -> pd.DataFrame:
    """Median ms per drafted token and per verification, per compression (the cost model's inputs)."""
    spec = steps[steps.drafted > 0]
    out = pd.DataFrame({
        "draft_ms_per_token": (spec.draft_ms / spec.drafted).groupby(spec.compression).median(),
        "verify_ms_target_alone": steps[steps.gamma == 0].groupby("compression").verify_ms.median(),
        "verify_ms_speculative": spec.groupby("compression").verify_ms.median(),
    })
    out["draft_token_over_target_forward"] = out.draft_ms_per_token / out.verify_ms_target_alone
    return out


def verify_latency(steps: pd.DataFrame) -> pd.DataFrame:
    """Median ms of one target forward by the number of tokens it verified (drafted + 1), per compression:
    every level's per-forward latencies (the draft's ms per token is in costs())."""
    table = steps.assign(tokens=steps.drafted + 1).pivot_table(
        index="compression", columns="tokens", values="verify_ms", aggfunc="median")
    table.columns = [f"target_{n}_tokens" for n in table.columns]
    return table


def best_gamma_beside(ours: pd.DataFrame, theirs: pd.DataFrame) -> pd.DataFrame:
    """Our best gamma per compression x task beside SpecKV's published one (their fp16 row beside our bf16:
    both are the uncompressed 16-bit target; their tokens/s are from an RTX 3090 with Llama 3.2 1B/3B)."""
    theirs = theirs.assign(compression=theirs.compression.replace({"fp16": "bf16"})).rename(
        columns={"optimal_gamma": "speckv_best_gamma", "best_tps": "speckv_tokens_per_s"})
    return ours.merge(theirs, on=["compression", "task"], how="left")
