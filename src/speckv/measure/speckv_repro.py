"""Reproduce SpecKV's Table 1 from its published step data, and measure what that protocol hides.

Why this exists: the SpecKV paper (github.com/Amorfati123/SpecKV, MIT) reports that an adaptive
gamma controller beats fixed gamma=4 by 56% in "expected tokens per step". We rebuild that number
from ``phase2_step_results.csv`` with our own code, so that (1) we know exactly what was measured
and (2) we can put numbers on why it is not a wall-clock speedup.

The paper's protocol (notebooks/Phase4_Final_Evaluation.ipynb), restated:

* Features: mean/max draft entropy, mean/min draft confidence, compression as an ordinal
  (fp16=0, int8=1, nf4=2), gamma. Target: the step's ``acceptance_rate``. No feature scaling.
* Split: ``train_test_split`` over the 5,112 *steps*, 20% test, ``random_state=42``, stratified by
  compression_task -> 4,089 train / 1,023 test.
* Model "MLP-16": ``MLPRegressor(hidden_layer_sizes=(16,), max_iter=500, random_state=42)``. Its
  test corr/MSE are reported from a fit on the train part, but Table 1 uses a refit on *all* 5,112
  steps, test steps included.
* Every policy is scored on each test step by the same model: expected tokens =
  ``clip(predicted_acceptance, 0, 1) * gamma + 1``, predicted from the step's *own* draft features
  with the gamma feature replaced by the policy's gamma. No recorded outcome enters Table 1.
* Fixed-4: gamma 4. Fixed-best: per compression, the gamma with the highest mean recorded
  ``tokens_produced`` over all steps (gamma 8 everywhere). Task-oracle: per (compression, task),
  the gamma with the highest *measured wall-clock tokens/s* (``phase2_optimal_gamma.csv``).
  SpecKV-fast: the max over gamma in {2,4,6,8} of the MLP's expected tokens. SpecKV-accurate: the
  same with ``RandomForestRegressor(100, random_state=42)`` refit on all steps.
* Cells are plain means over test steps; "Overall" is the mean over all 1,023 test steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import RegressorMixin
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.neural_network import MLPRegressor

from speckv.errors import SpeckvError

STEP_COLUMNS = (
    "compression", "gamma", "task", "step", "accepted", "acceptance_rate", "tokens_produced",
    "mean_draft_entropy", "mean_draft_confidence", "max_draft_entropy", "min_draft_confidence",
)
COMPRESSION_ORDINAL = {"fp16": 0, "int8": 1, "nf4": 2}  # the paper's comp_map
COMPRESSIONS = tuple(COMPRESSION_ORDINAL)
TASKS = ("code", "math", "chat", "summarization")
FEATURES = (  # order matters only for exact replication of the paper's MLP fit
    "mean_draft_entropy", "mean_draft_confidence", "max_draft_entropy", "min_draft_confidence",
    "comp_enc", "gamma",
)
POLICIES = ("Fixed-4", "Fixed-best", "Task-oracle", "SpecKV-fast")
ACCURATE = "SpecKV-accurate"
RUN_KEY = ("compression", "gamma", "task", "prompt")  # one decoding run = one prompt at one config
PROMPT_KEY = ("task", "prompt")  # the same prompt text across all compressions and gammas


@dataclass(frozen=True)
class PaperProtocol:
    """Knobs of the paper's Table 1 pipeline; the defaults replicate it exactly."""

    test_size: float = 0.2
    seed: int = 42
    hidden_layer_sizes: tuple[int, ...] = (16,)
    max_iter: int = 500
    gammas: tuple[int, ...] = (2, 4, 6, 8)
    refit_on_all: bool = True  # the paper scores test steps with a model that was trained on them
    with_accurate: bool = False  # add the RF-100 "SpecKV-accurate" row (about 1 s more)


@dataclass(frozen=True)
class Reference:
    """The published artefacts Table 1 is built from, plus the paper's own tables to compare to."""

    steps: pd.DataFrame
    optimal_gamma: dict[tuple[str, str], int]
    paper_table1: pd.DataFrame  # rows: policies; columns: Overall + compressions
    paper_table2: pd.DataFrame | None = None
    paper_numbers: dict | None = None


@dataclass(frozen=True)
class PaperRun:
    """One pass of the paper's protocol: the split, the fitted model and per-test-step scores."""

    protocol: PaperProtocol
    train_idx: np.ndarray
    test_idx: np.ndarray
    model: RegressorMixin
    test_corr: float  # of a fit on the train part only, as the paper reports it
    test_mse: float
    expected: pd.DataFrame  # test steps x gamma: the model's expected tokens/step
    scored: pd.DataFrame  # test steps: recorded columns + one column per policy + speckv_gamma
    fixed_best: dict[str, int]
    task_oracle: dict[tuple[str, str], int]


@dataclass(frozen=True)
class Critique:
    """Measured facts about the protocol; every frame is computed, nothing is typed in."""

    predicted_vs_realized: pd.DataFrame  # per policy: Table-1 value vs recorded tokens at its gamma
    by_recorded_gamma: pd.DataFrame  # calibration by the gamma the test step was recorded at
    matched: dict[str, float]  # test steps whose recorded gamma == SpecKV's choice
    leakage: dict[str, float]  # how much of the test set the training data already saw
    splits: pd.DataFrame  # corr/MSE and Table-1 scores under step vs group splits
    speedup: pd.DataFrame  # Leviathan speedup per (cost ratio, compression, gamma)
    best_gamma: pd.DataFrame  # argmax gamma per (cost ratio, compression): tokens/step vs speedup
    policy_speedup: pd.DataFrame  # per cost ratio and policy: predicted and realized speedup
    measured_optimum: pd.DataFrame  # wall-clock optimum (phase2) vs tokens/step and cost-aware argmax
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- loading

def load_steps(path: str | Path) -> pd.DataFrame:
    """Read phase2_step_results.csv and add the keys the paper leaves implicit.

    ``comp_enc`` is the paper's ordinal encoding. ``prompt`` numbers the prompts inside each
    (compression, gamma, task) block: ``step`` restarts at 0 for every prompt, and the file keeps
    decoding order, so the prompt position is recoverable (it matches ``num_steps`` of every run in
    the paper's phase2_experiment_results.csv, and position i is the same prompt text in every
    configuration). ``run`` identifies one decoding run, for group splits.
    """
    df = pd.read_csv(path)
    missing = [c for c in STEP_COLUMNS if c not in df.columns]
    if missing:
        raise SpeckvError(f"{path}: missing columns {missing}")
    unknown = sorted(set(df["compression"]) - set(COMPRESSION_ORDINAL))
    if unknown:
        raise SpeckvError(f"{path}: unknown compression levels {unknown}")
    df["comp_enc"] = df["compression"].map(COMPRESSION_ORDINAL).astype(int)
    restart = df.groupby(["compression", "gamma", "task"], sort=False)["step"].transform(
        lambda s: s.diff().fillna(-1).le(0).cumsum() - 1)
    df["prompt"] = restart.astype(int)
    df["run"] = df[list(RUN_KEY)].astype(str).agg("/".join, axis=1)
    return df


def load_optimal_gamma(path: str | Path) -> dict[tuple[str, str], int]:
    """The Task-oracle lookup: (compression, task) -> gamma with the best measured tokens/s."""
    df = pd.read_csv(path)
    return {(r.compression, r.task): int(r.optimal_gamma) for r in df.itertuples(index=False)}


def load_paper_table1(path: str | Path) -> pd.DataFrame:
    """The paper's Table 1, turned to our layout: rows policies, columns Overall + compressions."""
    df = pd.read_csv(path).set_index("compression").T
    df.index.name = "policy"
    df.columns.name = None
    return df[["Overall", *COMPRESSIONS]].astype(float)


def load_reference(directory: str | Path) -> Reference:
    """Everything in a SpecKV reference directory (shipped: speckv/data/reference/speckv) that the reproduction and critique need."""
    d = Path(directory)
    table2 = d / "paper_table2_detailed_breakdown.csv"
    numbers = d / "paper_numbers.json"
    return Reference(
        steps=load_steps(d / "phase2_step_results.csv"),
        optimal_gamma=load_optimal_gamma(d / "phase2_optimal_gamma.csv"),
        paper_table1=load_paper_table1(d / "paper_table1_policy_comparison.csv"),
        paper_table2=pd.read_csv(table2) if table2.exists() else None,
        paper_numbers=json.loads(numbers.read_text()) if numbers.exists() else None,
    )


# ------------------------------------------------------------------------------- the protocol

def paper_split(steps: pd.DataFrame, protocol: PaperProtocol = PaperProtocol()) -> tuple[np.ndarray, np.ndarray]:
    """The paper's step-level split: same call, seed and stratification key, so the same rows."""
    strat = steps["compression"] + "_" + steps["task"]
    train, test = train_test_split(np.arange(len(steps)), test_size=protocol.test_size,
                                   random_state=protocol.seed, stratify=strat)
    return np.asarray(train), np.asarray(test)


def make_mlp(protocol: PaperProtocol = PaperProtocol()) -> MLPRegressor:
    """MLP-16 as in the paper (raw features, default adam/relu); deterministic given the seed."""
    return MLPRegressor(hidden_layer_sizes=protocol.hidden_layer_sizes, max_iter=protocol.max_iter,
                        random_state=protocol.seed)


def _xy(steps: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return steps[list(FEATURES)].to_numpy(float), steps["acceptance_rate"].to_numpy(float)


def fit_acceptance(model: RegressorMixin, steps: pd.DataFrame) -> RegressorMixin:
    """Fit an acceptance-rate regressor on ``steps`` (features as in FEATURES)."""
    x, y = _xy(steps)
    return model.fit(x, y)


def predict_acceptance(model: RegressorMixin, steps: pd.DataFrame, gamma: int | None = None) -> np.ndarray:
    """Clipped predicted acceptance; with ``gamma`` set, the row's gamma feature is replaced by it.

    Replacing gamma while keeping the row's draft statistics is the paper's counterfactual: the
    statistics were measured over the gamma tokens actually drafted, not over ``gamma`` tokens.
    """
    x, _ = _xy(steps)
    if gamma is not None:
        x[:, FEATURES.index("gamma")] = gamma
    return np.clip(model.predict(x), 0.0, 1.0)


def expected_tokens(model: RegressorMixin, steps: pd.DataFrame, gammas: tuple[int, ...]) -> pd.DataFrame:
    """The paper's score: clip(predicted acceptance) * gamma + 1, for each candidate gamma."""
    return pd.DataFrame({g: predict_acceptance(model, steps, g) * g + 1 for g in gammas}, index=steps.index)


def best_fixed_gamma(steps: pd.DataFrame) -> dict[str, int]:
    """Fixed-best's lookup: per compression, argmax over gamma of mean recorded tokens/step (all data)."""
    means = steps.groupby(["compression", "gamma"])["tokens_produced"].mean().unstack()
    return {c: int(means.loc[c].idxmax()) for c in means.index}


def _choose(expected: pd.DataFrame) -> pd.Series:
    """First gamma with the highest value: the paper keeps the first strict maximum."""
    cols = np.asarray(expected.columns)
    return pd.Series(cols[np.argmax(expected.to_numpy(), axis=1)], index=expected.index)


def _pick(expected: pd.DataFrame, gammas: pd.Series) -> np.ndarray:
    pos = expected.columns.get_indexer(gammas.to_numpy())
    return expected.to_numpy()[np.arange(len(expected)), pos]


def score_policies(test: pd.DataFrame, expected: pd.DataFrame, fixed_best: dict[str, int],
                   task_oracle: dict[tuple[str, str], int]) -> pd.DataFrame:
    """Per test step, each policy's gamma and its model-expected tokens (Table 1's raw values)."""
    out = test[["compression", "task", "prompt", "run", "step", "gamma", "tokens_produced"]].copy()
    chosen = {
        "Fixed-4": pd.Series(4, index=test.index),
        "Fixed-best": test["compression"].map(fixed_best),
        "Task-oracle": pd.Series([task_oracle.get((c, t), 4) for c, t in zip(test["compression"], test["task"])],
                                 index=test.index),
        "SpecKV-fast": _choose(expected),
    }
    for name, g in chosen.items():
        out[name] = _pick(expected, g.astype(int))
        out[f"{name}:gamma"] = g.astype(int).to_numpy()
    out["speckv_gamma"] = out["SpecKV-fast:gamma"]
    return out


def run_paper_protocol(steps: pd.DataFrame, optimal_gamma: dict[tuple[str, str], int],
                       protocol: PaperProtocol = PaperProtocol(),
                       split: tuple[np.ndarray, np.ndarray] | None = None) -> PaperRun:
    """Run the paper's Table-1 pipeline; ``split`` swaps in another train/test split."""
    train_idx, test_idx = split if split is not None else paper_split(steps, protocol)
    train, test = steps.iloc[train_idx], steps.iloc[test_idx]
    model = fit_acceptance(make_mlp(protocol), train)
    pred = predict_acceptance(model, test)
    corr = float(np.corrcoef(test["acceptance_rate"], pred)[0, 1])
    mse = float(np.mean((test["acceptance_rate"].to_numpy() - pred) ** 2))
    if protocol.refit_on_all:
        model = fit_acceptance(make_mlp(protocol), steps)
    expected = expected_tokens(model, test, protocol.gammas)
    fixed_best = best_fixed_gamma(steps)
    scored = score_policies(test, expected, fixed_best, optimal_gamma)
    if protocol.with_accurate:
        rf = RandomForestRegressor(n_estimators=100, random_state=protocol.seed)
        rf = fit_acceptance(rf, steps if protocol.refit_on_all else train)
        scored[ACCURATE] = expected_tokens(rf, test, protocol.gammas).max(axis=1)
    return PaperRun(protocol, train_idx, test_idx, model, corr, mse, expected, scored, fixed_best, optimal_gamma)


def summarize(scored: pd.DataFrame, policies: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Rows policies, columns Overall + compressions: mean expected tokens/step over test steps."""
    policies = policies or tuple(p for p in (*POLICIES, ACCURATE) if p in scored.columns)
    per_comp = scored.groupby("compression")[list(policies)].mean().T
    table = pd.concat([scored[list(policies)].mean().rename("Overall"), per_comp], axis=1)
    table.index.name = "policy"
    return table[["Overall", *[c for c in COMPRESSIONS if c in table.columns]]]


def reproduce_table1(ref: Reference, protocol: PaperProtocol = PaperProtocol(),
                     run: PaperRun | None = None) -> pd.DataFrame:
    """Table 1 reproduced next to the paper's: columns (reproduced|paper|diff) x (Overall, fp16, ...)."""
    run = run or run_paper_protocol(ref.steps, ref.optimal_gamma, protocol)
    ours = summarize(run.scored)
    paper = ref.paper_table1.reindex(index=ours.index, columns=ours.columns)
    return pd.concat({"reproduced": ours, "paper": paper, "diff": ours - paper}, axis=1)


def reproduce_table2(ref: Reference, run: PaperRun | None = None) -> pd.DataFrame:
    """Table 2 (Fixed-4 vs SpecKV-fast per compression x task), reproduced beside the paper's."""
    run = run or run_paper_protocol(ref.steps, ref.optimal_gamma)
    ours = run.scored.groupby(["compression", "task"])[["Fixed-4", "SpecKV-fast"]].mean()
    ours["improvement_pct"] = (ours["SpecKV-fast"] / ours["Fixed-4"] - 1) * 100
    ours = ours.rename(columns={"SpecKV-fast": "SpecKV"})
    if ref.paper_table2 is None:
        return ours
    paper = ref.paper_table2.set_index(["compression", "task"])[["Fixed-4", "SpecKV", "improvement_pct"]]
    return pd.concat({"reproduced": ours, "paper": paper.reindex(ours.index)}, axis=1)


# --------------------------------------------------------------------------------- the critique

def _realized_cells(steps: pd.DataFrame) -> pd.Series:
    """Recorded mean tokens/step per (compression, task, gamma): every cell ran the same 5 prompts."""
    return steps.groupby(["compression", "task", "gamma"])["tokens_produced"].mean()


def _realized_for(scored: pd.DataFrame, gammas: pd.Series, cells: pd.Series) -> np.ndarray:
    keys = pd.MultiIndex.from_arrays([scored["compression"], scored["task"], gammas.astype(int)])
    return cells.reindex(keys).to_numpy()


def _leakage(steps: pd.DataFrame, train_idx: np.ndarray, test_idx: np.ndarray, refit: bool) -> dict[str, float]:
    in_train = np.zeros(len(steps), bool)
    in_train[train_idx] = True
    s = steps.assign(_tr=in_train)
    runs_with_train = set(s.loc[s["_tr"], "run"])
    cells_with_train = set(map(tuple, s.loc[s["_tr"], ["compression", "task", "gamma"]].to_numpy()))
    prev_tr = s.groupby("run", sort=False)["_tr"].shift(1, fill_value=False)
    next_tr = s.groupby("run", sort=False)["_tr"].shift(-1, fill_value=False)
    test = s.iloc[test_idx]
    return {
        "n_train": float(len(train_idx)),
        "n_test": float(len(test_idx)),
        "frac_test_in_final_fit": 1.0 if refit else 0.0,
        "frac_test_run_has_train_steps": float(test["run"].isin(runs_with_train).mean()),
        "frac_test_cell_has_train_steps": float(np.mean([tuple(k) in cells_with_train for k in
                                                         test[["compression", "task", "gamma"]].to_numpy()])),
        "frac_test_with_train_neighbour": float((prev_tr.iloc[test_idx] | next_tr.iloc[test_idx]).mean()),
        "runs": float(s["run"].nunique()),
        "prompts": float(s.groupby(list(PROMPT_KEY)).ngroups),
    }


def _group_split(steps: pd.DataFrame, key: tuple[str, ...], test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    groups = steps[list(key)].astype(str).agg("/".join, axis=1)
    gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(gss.split(np.zeros(len(steps)), groups=groups))
    return train, test


def critique(ref: Reference, protocol: PaperProtocol = PaperProtocol(),
             cost_ratios: tuple[float, ...] = (0.05, 0.5), run: PaperRun | None = None,
             group_seeds: tuple[int, ...] = (42,)) -> Critique:
    """Measure three weaknesses of the Table-1 protocol (each a few MLP fits, ~seconds).

    (a) Predicted vs realized: Table 1 never looks at a recorded outcome. We put each policy's
        predicted tokens/step beside the tokens/step actually recorded at the gamma it picks
        (same compression and task, same prompts), and check calibration by recorded gamma.
    (b) Leakage: the split is over steps of the same runs, and the scored model is refit on the test
        steps. We count the overlap and rerun the protocol with group splits and no refit.
    (c) Cost: tokens/step ignores that drafting gamma tokens costs time. Leviathan et al.'s
        speedup = tokens/step / (gamma * c + 1) picks a different gamma once c is realistic.

    One group split is noisy (20 prompts, 48 cells): pass several ``group_seeds`` to average
    the group-split rows over that many random group splits (one MLP fit each).
    """
    steps = ref.steps
    run = run or run_paper_protocol(steps, ref.optimal_gamma, protocol)
    sc = run.scored
    cells = _realized_cells(steps)
    notes: list[str] = []

    # (a) predicted vs realized -----------------------------------------------------------------
    rows = []
    for p in POLICIES:
        realized = _realized_for(sc, sc[f"{p}:gamma"], cells)
        rows.append({"policy": p, "predicted": sc[p].mean(), "realized": float(np.nanmean(realized)),
                     "mean_gamma": sc[f"{p}:gamma"].mean()})
    pvr = pd.DataFrame(rows).set_index("policy")
    pvr["overstatement_pct"] = (pvr["predicted"] / pvr["realized"] - 1) * 100
    base = pvr.loc["Fixed-4"]
    pvr["gain_vs_fixed4_predicted_pct"] = (pvr["predicted"] / base["predicted"] - 1) * 100
    pvr["gain_vs_fixed4_realized_pct"] = (pvr["realized"] / base["realized"] - 1) * 100

    test = steps.iloc[run.test_idx]
    own = predict_acceptance(run.model, test) * test["gamma"].to_numpy() + 1
    at8 = run.expected[max(protocol.gammas)]
    realized8 = test.loc[test["gamma"] == max(protocol.gammas), "tokens_produced"].mean()
    brg = pd.DataFrame({"recorded_gamma": test["gamma"].to_numpy(), "realized": test["tokens_produced"].to_numpy(),
                        "predicted_at_recorded": own, f"predicted_at_{max(protocol.gammas)}": at8.to_numpy()})
    brg = brg.groupby("recorded_gamma").agg(n=("realized", "size"), realized=("realized", "mean"),
                                            predicted_at_recorded=("predicted_at_recorded", "mean"),
                                            **{f"predicted_at_{max(protocol.gammas)}":
                                               (f"predicted_at_{max(protocol.gammas)}", "mean")})
    brg[f"realized_at_{max(protocol.gammas)}"] = realized8
    m = sc["gamma"].to_numpy() == sc["speckv_gamma"].to_numpy()
    matched = {"n": float(m.sum()), "frac_of_test": float(m.mean()),
               "predicted": float(sc.loc[m, "SpecKV-fast"].mean()),
               "realized": float(sc.loc[m, "tokens_produced"].mean()),
               "corr": float(np.corrcoef(sc.loc[m, "SpecKV-fast"], sc.loc[m, "tokens_produced"])[0, 1])}

    # (b) leakage and group splits ---------------------------------------------------------------
    leakage = _leakage(steps, run.train_idx, run.test_idx, protocol.refit_on_all)
    no_refit = replace(protocol, refit_on_all=False, with_accurate=False)
    paper_split_ = (run.train_idx, run.test_idx)
    variants: dict[str, tuple[PaperProtocol, list[tuple[np.ndarray, np.ndarray]]]] = {
        "paper: step split, refit on all": (protocol, [paper_split_]),
        "step split, train only": (no_refit, [paper_split_]),
    }
    for name, key in (("group by run (compression,gamma,task,prompt)", RUN_KEY),
                      ("group by cell (compression,task,gamma)", ("compression", "task", "gamma")),
                      ("group by prompt (task,prompt)", PROMPT_KEY)):
        variants[name] = (no_refit, [_group_split(steps, key, protocol.test_size, s) for s in group_seeds])
    split_rows = []
    for name, (proto, split_list) in variants.items():
        reps = []
        for split in split_list:
            r = run if name.startswith("paper") else run_paper_protocol(steps, ref.optimal_gamma, proto, split)
            row = {"n_test": len(r.test_idx), "test_corr": r.test_corr, "test_mse": r.test_mse}
            row.update(r.scored[list(POLICIES)].mean().to_dict())
            row["Fixed-4 realized"] = float(np.nanmean(_realized_for(r.scored, r.scored["Fixed-4:gamma"], cells)))
            row["SpecKV-fast realized"] = float(np.nanmean(_realized_for(r.scored, r.scored["speckv_gamma"], cells)))
            row["gain_predicted_pct"] = (row["SpecKV-fast"] / row["Fixed-4"] - 1) * 100
            row["gain_realized_pct"] = (row["SpecKV-fast realized"] / row["Fixed-4 realized"] - 1) * 100
            reps.append(row)
        split_rows.append({"split": name, "n_splits": len(reps), **pd.DataFrame(reps).mean().to_dict()})
    splits = pd.DataFrame(split_rows).set_index("split")

    # (c) drafting cost --------------------------------------------------------------------------
    gammas = list(protocol.gammas)
    realized_cg = steps.groupby(["compression", "gamma"])["tokens_produced"].mean().unstack()[gammas]
    predicted_cg = pd.concat([run.expected, sc["compression"]], axis=1).groupby("compression")[gammas].mean()
    sp_rows, best_rows, pol_rows = [], [], []
    for c in cost_ratios:
        denom = np.array([g * c + 1 for g in gammas])
        for source, tps in (("realized", realized_cg), ("predicted", predicted_cg)):
            su = tps / denom
            for comp in su.index:
                sp_rows.append({"cost_ratio": c, "source": source, "compression": comp,
                                **{g: float(su.loc[comp, g]) for g in gammas}})
                best_rows.append({"cost_ratio": c, "source": source, "compression": comp,
                                  "best_gamma_tokens_per_step": int(tps.loc[comp].idxmax()),
                                  "best_gamma_speedup": int(su.loc[comp].idxmax())})
        # per policy: total tokens / total step time, on predicted and on recorded tokens
        cost_aware = _choose(run.expected.div(pd.Series(denom, index=gammas), axis=1))
        fixed_cost = (realized_cg / denom).idxmax(axis=1).astype(int).to_dict()  # in-sample oracle
        choices = {p: sc[f"{p}:gamma"] for p in POLICIES} | {
            "SpecKV cost-aware": cost_aware, "Fixed-best cost-aware": sc["compression"].map(fixed_cost)}
        for p, g in choices.items():
            g = g.astype(int)
            pred = _pick(run.expected, g)
            real = _realized_for(sc, g, cells)
            t = g.to_numpy() * c + 1
            pol_rows.append({"cost_ratio": c, "policy": p, "mean_gamma": g.mean(),
                             "predicted_speedup": pred.sum() / t.sum(),
                             "realized_speedup": np.nansum(real) / t[~np.isnan(real)].sum()})
    speedup = pd.DataFrame(sp_rows).set_index(["cost_ratio", "source", "compression"])
    best_gamma = pd.DataFrame(best_rows).set_index(["cost_ratio", "source", "compression"])
    policy_speedup = pd.DataFrame(pol_rows).set_index(["cost_ratio", "policy"])

    # the paper's own wall-clock optimum vs the tokens/step argmax, and which cost ratio explains it
    cell_tps = cells.unstack("gamma")[gammas]
    grid = np.round(np.arange(0.0, 2.001, 0.01), 2)
    opt = pd.Series(ref.optimal_gamma)
    hits = {c: int(sum(int((cell_tps.loc[k] / np.array([g * c + 1 for g in gammas])).idxmax()) == v
                       for k, v in opt.items() if k in cell_tps.index)) for c in grid}
    mo_rows = []
    for (comp, task), g_opt in opt.items():
        row = {"compression": comp, "task": task, "wallclock_optimal_gamma": g_opt,
               "tokens_per_step_argmax": int(cell_tps.loc[(comp, task)].idxmax())}
        for c in cost_ratios:
            su = cell_tps.loc[(comp, task)] / np.array([g * c + 1 for g in gammas])
            row[f"speedup_argmax_c={c}"] = int(su.idxmax())
        matching = [c for c in grid if int((cell_tps.loc[(comp, task)] /
                                            np.array([g * c + 1 for g in gammas])).idxmax()) == g_opt]
        row["c_range_matching_optimum"] = (min(matching), max(matching)) if matching else None
        mo_rows.append(row)
    measured_optimum = pd.DataFrame(mo_rows).set_index(["compression", "task"])
    for comp in COMPRESSIONS:
        keys = [k for k in opt.index if k[0] == comp and k in cell_tps.index]
        if not keys:
            continue
        per_c = {c: sum(int((cell_tps.loc[k] / np.array([g * c + 1 for g in gammas])).idxmax()) == opt[k]
                        for k in keys) for c in grid}
        top = max(per_c.values())
        cs = [c for c, h in per_c.items() if h == top]
        notes.append(f"{comp}: c in [{min(cs)}, {max(cs)}] matches {top}/{len(keys)} measured optimal gammas")
    best_hits = max(hits.values())
    best_cs = [c for c, h in hits.items() if h == best_hits]
    notes.append(f"cost ratio c in [{min(best_cs)}, {max(best_cs)}] reproduces {best_hits}/{len(opt)} of the "
                 f"paper's measured wall-clock optimal gammas; tokens/step (c=0) reproduces {hits[0.0]}/{len(opt)}")
    notes.append(f"SpecKV-fast picks gamma {protocol.gammas[-1]} on "
                 f"{(sc['speckv_gamma'] == max(protocol.gammas)).mean():.1%} of test steps; Fixed-best is "
                 f"gamma {sorted(set(run.fixed_best.values()))}, so SpecKV-fast >= Fixed-best by construction")
    return Critique(pvr, brg, matched, leakage, splits, speedup, best_gamma, policy_speedup, measured_optimum, notes)
