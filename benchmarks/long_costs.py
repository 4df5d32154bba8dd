"""Does the cost model's context term hold to 16K tokens? (issue 16, item 1)

Reads the rows of `speckv eval --long-context` directories (each method's summed draft and verify
milliseconds per document) and sets them beside what the setup's cost model predicts at the
document's context: draft ms per drafted token at the context the draft attends to (the whole
prompt for `full`, the working cache for window and retrieval), and verify ms per step at the mean
tokens verified. Then it refits the verification line on these long runs alone (per document and
method, the summed features of its steps: within a document the context barely moves), to show
which term the short-context fit missed. No model runs here:

    .venv/bin/python benchmarks/long_costs.py benchmarks/results/long_eval_* --out benchmarks/results/long_costs.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from speckv.control import Setup, cost_for
from speckv.drafting.context import LongContext


def rows_of(directories: list[Path]) -> pd.DataFrame:
    rows = []
    for directory in directories:
        for path in sorted((directory / "long").glob("*.json")):
            rows += json.loads(path.read_text())
    return pd.DataFrame(rows)


def compare(frame: pd.DataFrame, setup: Setup) -> list[dict]:
    cost = cost_for(setup)
    budget = LongContext().budget
    out = []
    for (length, method), part in frame.groupby(["length", "method"]):
        ctx = float((part.prompt_tokens + part.new_tokens / 2).mean())
        steps = part.steps.sum()
        n = part.drafted.sum() / steps + 1  # tokens per verification
        row = {"length": int(length), "method": method, "context": round(ctx),
               "verify_ms_measured": round(part.verify_ms.sum() / steps, 1),
               "verify_ms_predicted": round(cost.verify_ms(round(n), int(ctx)), 1)}
        if part.drafted.sum():
            mode = part["mode"].iloc[0]
            draft_ctx = ctx if mode == "full" else budget + float(part.new_tokens.mean()) / 2
            row.update({"draft_context": round(draft_ctx),
                        "draft_ms_per_token_measured": round(part.draft_ms.sum() / part.drafted.sum(), 1),
                        "draft_ms_per_token_predicted": round(cost.draft_ms(1, int(draft_ctx)), 1)})
        out.append(row)
    return out


def refit_verify(frame: pd.DataFrame) -> dict:
    """v0 + v1 n + v2 ctx/1000 + v3 n ctx/1000 per verification, fitted (non-negative least
    squares) to each row's summed verification time: steps x features, n summed over steps."""
    import numpy as np
    from scipy.optimize import nnls

    steps = frame.steps.to_numpy(float)
    n = (frame.drafted + frame.steps).to_numpy(float)  # tokens verified, summed over steps
    k = (frame.prompt_tokens + frame.new_tokens / 2).to_numpy(float) / 1000
    x = np.stack([steps, n, steps * k, n * k], axis=1)
    coef, _ = nnls(x, frame.verify_ms.to_numpy(float))
    predicted = x @ coef
    error = float(np.median(np.abs(predicted / frame.verify_ms.to_numpy(float) - 1)))
    return {"verify": [round(float(c), 3) for c in coef], "median_abs_error": round(error, 3), "rows": len(frame)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directories", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    config = json.loads((args.directories[0] / "long_context.json").read_text())
    setup = Setup(config["target"], config["draft"], config["compression"], "nf4")
    frame = rows_of(args.directories)
    table = compare(frame, setup)
    print(pd.DataFrame(table).to_string(index=False))
    refit = refit_verify(frame)
    short = cost_for(setup).verify
    print(f"verify line fitted at short contexts: {[round(v, 2) for v in short]}; refitted on these long runs: "
          f"{refit['verify']} (median error {refit['median_abs_error']:.1%} over {refit['rows']} runs)")
    if args.out:
        from speckv.files import write_json

        write_json(args.out, {"setup": setup.slug(), "cost_model": cost_for(setup).to_dict(), "rows": table,
                              "verify_refit_on_long_runs": refit})


if __name__ == "__main__":
    main()
