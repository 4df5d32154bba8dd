"""`speckv train`: fit the trained controllers from traces of *training* prompts.

cost-aware: a logistic acceptance model over (entropy, top1, margin) on every on-path trace
position (teacher-forced, so each is conditioned on an accepted prefix: exactly what the
controller asks), one per compression, bundled with that setup's calibrated cost model; and one
over prompt lookup's signals on the offers lookup makes along the same traces.
speckv: the paper's MLP-16 on step records; ours come from exact replays of fixed gamma in
{2,4,6,8} on the same traces (real outcomes, not predictions), all compressions jointly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPRegressor

from speckv.control import cost_aware, speckv_mlp
from speckv.control.artifact import Artifact, Setup
from speckv.control.fixed import Fixed
from speckv.errors import SpeckvError
from speckv.cost import CostModel
from speckv.measure.replay import lookup_offers, replay
from speckv.measure.trace import Trace, position_table


def _trained_on(traces: list[Trace]) -> dict:
    return {"prompts": sorted({t.meta.get("prompt_id", "?") for t in traces}), "traces": len(traces),
            "positions": sum(len(t.output_ids) for t in traces)}


def acceptance_features(pos: pd.DataFrame) -> np.ndarray:
    """cost-aware's acceptance-model inputs (cost_aware.FEATURES) for a position_table()."""
    return pos.assign(log1m_top1=pos.top1.map(cost_aware.log1m))[cost_aware.FEATURES].to_numpy(float)


def lookup_table(traces: list[Trace], max_gamma: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Prompt lookup's offers at every output position of the traces (lookup is a function of the
    text, so the traces' text is all it needs): features (cost_aware.LOOKUP_FEATURES) of each
    offered token while the ones before it were accepted, and whether the target accepted it."""
    from speckv.drafting.lookup import LookupSource

    x, y = [], []
    for tr in traces:
        for offer, accepted in lookup_offers(tr, LookupSource(), max_gamma):
            for i, proposal in enumerate(offer[: accepted + 1]):  # accepted ones, then the first rejected
                x.append(cost_aware.lookup_features(proposal.signals, i))
                y.append(i < accepted)
    return np.array(x, float).reshape(-1, len(cost_aware.LOOKUP_FEATURES)), np.array(y, int)


def train_lookup_acceptance(traces: list[Trace]) -> list[float]:
    """cost_aware.LookupAcceptance weights (intercept first) fitted on the traces' lookup offers;
    the built-in default where the traces offer too little to fit."""
    x, y = lookup_table(traces)
    if len(y) < 50 or len(set(y.tolist())) < 2:
        return list(cost_aware.LookupAcceptance().weights)
    model = LogisticRegression(C=10, max_iter=1000).fit(x, y)
    return [float(model.intercept_[0]), *map(float, model.coef_[0])]


def train_cost_aware(traces: list[Trace], setup: Setup, cost: CostModel, max_gamma: int = 16) -> Artifact:
    max_gamma = min(max_gamma, *(t.depth + 1 for t in traces))  # stay replayable on these traces
    pos = position_table(traces)
    if pos.match.nunique() < 2:
        raise SpeckvError("training traces need both accepted and rejected draft tokens")
    model = LogisticRegression(max_iter=1000).fit(acceptance_features(pos), pos.match.to_numpy(int))
    weights = [float(model.intercept_[0]), *map(float, model.coef_[0])]
    params = {"weights": weights, "prior": float(pos.match.mean()), "max_gamma": max_gamma,
              "cost": cost.to_dict(), "lookup_weights": train_lookup_acceptance(traces),
              "lookup_features": cost_aware.LOOKUP_FEATURES}
    return Artifact("cost-aware", setup, cost_aware.FEATURES, params, _trained_on(traces))


def speckv_steps(traces: list[Trace], gammas=(2, 4, 6, 8)) -> np.ndarray:
    """SpecKV's step table from exact replays: features + gamma -> acceptance rate (last column)."""
    rows = []
    for tr in traces:
        code = speckv_mlp.COMPRESSION_CODE[tr.meta["compression"]]
        for g in (g for g in gammas if g <= tr.depth + 1):  # a trace supports budgets up to depth + 1
            for s in replay(tr, Fixed(g)):
                if s.drafted:
                    rows.append(speckv_mlp.step_features(s.signals, code) + [g, s.accepted / s.drafted])
    return np.array(rows)


def train_speckv(traces: list[Trace], setups: list[Setup]) -> list[Artifact]:
    """One MLP over all compressions (the paper's joint model), saved once per setup."""
    data = speckv_steps(traces)
    if len(data) < 10:
        raise SpeckvError("too few drafted steps in the training traces to fit SpecKV's MLP")
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=500, random_state=42).fit(data[:, :-1], data[:, -1])
    params = {"hidden": mlp.coefs_[0].tolist(), "hidden_bias": mlp.intercepts_[0].tolist(),
              "out": mlp.coefs_[1][:, 0].tolist(), "out_bias": float(mlp.intercepts_[1][0]), "gammas": [2, 4, 6, 8]}
    return [Artifact("speckv", s, speckv_mlp.FEATURES, params, _trained_on(traces)) for s in setups]


def heterospec_table(traces: list[Trace], depth: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """HeteroSpec's training pairs from on-path positions: x = the draft's cumulative top-K entropy
    over the `depth` positions from t (the spine a tree would grow if the draft followed the target),
    y = the run of accepted draft tokens from t, capped at `cap` (the deepest tree)."""
    x, y = [], []
    for tr in traces:
        ent = np.array([s.topk_entropy for s in tr.signals])
        match = np.array(tr.matches, bool)
        if not ent.any():
            raise SpeckvError("traces lack the draft's top-K entropy (collected before it was recorded): "
                              "recollect them with `speckv trace`")
        run = np.zeros(len(match) + 1, int)
        for t in range(len(match) - 1, -1, -1):
            run[t] = run[t + 1] + 1 if match[t] else 0
        for t in range(len(match) - depth):
            x.append(ent[t:t + depth].sum())
            y.append(min(run[t], cap))
    return np.array(x).reshape(-1, 1), np.array(y, float)


def heterospec_trainable(traces: list[Trace], depth: int = 5) -> bool:
    """Whether the traces can fit HeteroSpec's strata: they record the top-K entropy (traces
    collected since trees) and hold at least 20 starting positions; else heterospec keeps using
    the shipped strata (or refuses, for another pair)."""
    return (all(any(s.topk_entropy for s in t.signals) for t in traces)
            and sum(max(0, len(t.output_ids) - depth) for t in traces) >= 20)


def train_heterospec(traces: list[Trace], setup: Setup, depth: int = 5, nodes: int = 16, width: int = 4) -> Artifact:
    """The strata: leaves of a depth-3 regression tree of accepted length on H (8 intervals)."""
    from sklearn.tree import DecisionTreeRegressor

    from speckv.control import heterospec

    alpha = -(-depth // 2)
    x, y = heterospec_table(traces, depth, depth + alpha)
    if len(y) < 20:
        raise SpeckvError(f"too few positions ({len(y)}) in the training traces to fit HeteroSpec's strata")
    reg = DecisionTreeRegressor(max_depth=3, min_samples_leaf=max(2, len(y) // 100), random_state=0).fit(x, y)
    edges = sorted(float(t) for t, f in zip(reg.tree_.threshold, reg.tree_.feature) if f >= 0)
    bins = np.searchsorted(edges, x[:, 0], side="right")
    strata = [{"share": float((bins == i).mean()), "mean_accepted": float(y[bins == i].mean()) if (bins == i).any() else None}
              for i in range(len(edges) + 1)]
    params = {"edges": edges, "depth": depth, "nodes": nodes, "width": width, "gammas": list(heterospec.GAMMAS),
              "strata": strata}
    return Artifact("heterospec", setup, heterospec.FEATURES, params, _trained_on(traces))
