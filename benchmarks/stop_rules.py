"""How far can a signal-driven stop rule go? Replay sweeps on the held-out traces of an evaluation.

`speckv eval` measures each controller at its one trained setting. This asks the question behind a
shortfall: is it the setting, or the information? For each target compression it replays, on the
test traces with that level's calibrated cost model, cost-aware with its stop threshold scaled by
each factor in a sweep and p-min at each p in a sweep, and reports predicted throughput relative to
fixed:4 and to the oracle (ratio of sums, paired bootstrap CI over prompts). The best point of a
sweep is picked in hindsight on the test prompts, so it is an upper bound for that family of rules,
not a tuned result. It also prints how well calibrated the acceptance model is on the test positions
(a miscalibrated model would be the fixable cause). No timing: it may run beside other work.

    .venv/bin/python benchmarks/stop_rules.py --out benchmarks/results/stop_rules.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from speckv.control import cost_aware, cost_aware_from, make_controller
from speckv.control.artifact import Setup, default_path, load_artifact
from speckv.control.cost_aware import CostAware
from speckv.control.oracle import Oracle
from speckv.control.train import acceptance_features
from speckv.cost import CostModel
from speckv.measure.replay import replay
from speckv.measure.stats import paired_ratio_ci
from speckv.measure.trace import load_traces, position_table

SCALES = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5)
P_MINS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
BINS = (0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)


class ScaledCostAware(CostAware):
    """cost-aware with its keep-drafting threshold (R x marginal cost) multiplied by `scale`."""

    def __init__(self, base: CostAware, scale: float):
        super().__init__(base.acceptance, base.cost, base.max_gamma, base.lr, f"cost-aware x{scale:g}")
        self.scale = scale

    def budget(self) -> int:
        gamma = super().budget()
        if gamma:
            self.rate *= self.scale  # keep drafting while S p > rate x marginal cost
        return gamma


def replay_runs(traces, cost: CostModel, makers: dict) -> pd.DataFrame:
    rows = []
    for tr in traces:
        for name, make in makers.items():
            steps = replay(tr, make(tr), cost)
            rows.append({"controller": name, "prompt_id": tr.meta["prompt_id"], "new_tokens": sum(s.emitted for s in steps),
                         "wall_s": cost.wall_s(steps, len(tr.prompt_ids)),
                         "drafted_per_step": float(np.mean([s.drafted for s in steps]))})
    return pd.DataFrame(rows)


def reliability(traces, art) -> pd.DataFrame:
    """Predicted vs observed acceptance of on-path draft tokens, binned by prediction."""
    pos = position_table(traces)
    w = np.array(art.params["weights"])
    pos["predicted"] = 1 / (1 + np.exp(-(w[0] + acceptance_features(pos) @ w[1:])))
    pos["bin"] = pd.cut(pos.predicted, BINS, include_lowest=True)
    table = pos.groupby("bin", observed=True).agg(n=("match", "size"), predicted=("predicted", "mean"),
                                                  observed=("match", "mean")).reset_index()
    return table.assign(bin=table["bin"].astype(str))


def sweep(eval_dir: Path, level: str) -> dict:
    cost = CostModel.load(eval_dir / "cost" / f"{level}.json")
    setup = Setup(*(cost.meta[k] for k in ("target", "draft", "compression", "draft_compression", "device")))
    art = load_artifact(eval_dir / "controllers" / default_path("cost-aware", setup).name, "cost-aware",
                        cost_aware.FEATURES, setup)
    traces = load_traces(eval_dir / "traces" / "test" / level)
    makers = {"fixed:4": lambda tr: make_controller("fixed:4"), "oracle": lambda tr: Oracle(tr, cost)}
    makers |= {f"cost-aware x{s:g}": (lambda s: lambda tr: ScaledCostAware(cost_aware_from(art), s))(s) for s in SCALES}
    makers |= {f"p-min:16:{p:g}": (lambda p: lambda tr: make_controller(f"p-min:16:{p}"))(p) for p in P_MINS}
    runs = replay_runs(traces, cost, makers)
    table = []
    for name in makers:
        vs_fixed, vs_oracle = paired_ratio_ci(runs, name, "fixed:4"), paired_ratio_ci(runs, name, "oracle")
        table.append({"controller": name, "vs_fixed4": vs_fixed.ratio, "low": vs_fixed.low, "high": vs_fixed.high,
                      "of_oracle": vs_oracle.ratio,
                      "drafted_per_step": runs[runs.controller == name].drafted_per_step.mean()})
    return {"level": level, "prompts": len(traces), "table": table,
            "reliability": reliability(traces, art).to_dict("records")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", type=Path, default=Path("benchmarks/results/eval_qwen"))
    ap.add_argument("--levels", default="bf16,int8,nf4")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = []
    for level in args.levels.split(","):
        if not (args.eval_dir / "cost" / f"{level}.json").is_file():
            print(f"{level}: no calibrated cost model in {args.eval_dir}; skipped")
            continue
        res = sweep(args.eval_dir, level)
        results.append(res)
        print(f"\n{level}: {res['prompts']} held-out prompts, replayed (predicted tokens/s)")
        print(pd.DataFrame(res["table"]).to_string(index=False, float_format="%.3f"))
        print("acceptance model on the test positions:")
        print(pd.DataFrame(res["reliability"]).to_string(index=False, float_format="%.3f"))
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
