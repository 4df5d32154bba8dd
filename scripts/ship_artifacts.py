"""Make the controller artifacts speckv ships for its built-in pair (src/speckv/control/shipped/).

`auto` uses these before any `speckv train` on the user's machine. Each is a cost-aware artifact for
one setup (Qwen2.5-Coder 1.5B target at bf16/int8/nf4 x 0.5B draft at bf16/nf4, CPU): the draft's
acceptance model trained on the committed evaluation's *training* traces for that target level
(benchmarks/results/eval_qwen: bf16-draft traces; the NF4 draft reuses them, as NF4 keeps the
draft's ranking of tokens nearly intact), prompt lookup's acceptance model fitted on the offers
lookup makes along the same traces, and the evaluation's calibrated cost model as a fallback
(`speckv.load` measures this machine's instead: measure/probe.py).

    .venv/bin/python scripts/ship_artifacts.py            # both kinds
    .venv/bin/python scripts/ship_artifacts.py cost-aware # cost-aware only (no model loads)
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from speckv.control.artifact import Artifact, Setup, load_artifact, shipped_path
from speckv.control import cost_aware
from speckv.control.train import train_lookup_acceptance
from speckv.measure.trace import load_traces

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "benchmarks" / "results" / "eval_qwen"
PAIR = Setup("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "bf16", "bf16", "cpu")
#: NF4 draft / bf16 draft, ms per draft token (benchmarks/results/drafters.json: 35.5 vs 57.8 ms)
NF4_DRAFT_RATIO = 0.62


def main() -> None:
    for level in ("bf16", "int8", "nf4"):
        setup = replace(PAIR, compression=level)
        trained = load_artifact(EVAL / "controllers" / f"cost-aware--{setup.slug()}.json", "cost-aware", cost_aware.FEATURES, setup)
        lookup = train_lookup_acceptance(load_traces(EVAL / "traces" / "train" / level))
        for draft_level in ("bf16", "nf4"):
            params = {**trained.params, "lookup_weights": lookup, "lookup_features": cost_aware.LOOKUP_FEATURES}
            note = "draft acceptance from bf16-draft traces"
            if draft_level == "nf4":
                cost = dict(params["cost"])
                cost["draft"] = [w * NF4_DRAFT_RATIO for w in cost["draft"]]
                cost["meta"] = {**cost.get("meta", {}), "draft_compression": "nf4",
                                "note": f"draft line scaled by {NF4_DRAFT_RATIO} (NF4/bf16 ms per draft token)"}
                params["cost"] = cost
            art = Artifact("cost-aware", replace(setup, draft_compression=draft_level), cost_aware.FEATURES, params,
                           {**trained.trained_on, "source": "benchmarks/results/eval_qwen (training split)", "note": note})
            path = art.save(shipped_path("cost-aware", art.setup))
            print(path.relative_to(ROOT), "lookup weights", [round(w, 3) for w in lookup])


def ship_heterospec() -> None:
    """HeteroSpec's strata per target level, from the same training traces re-drafted by the bf16
    draft (one teacher-forced pass each: the traces predate the top-K entropy signal); the NF4
    draft reuses them like cost-aware's acceptance model does."""
    from speckv.control.train import train_heterospec
    from speckv.measure.trace import redraft
    from speckv.models.load import load_model
    from speckv.models.registry import DEFAULT_DRAFT

    draft = load_model(DEFAULT_DRAFT, "bf16", "cpu", "torch").runner
    for level in ("bf16", "int8", "nf4"):
        traces = [redraft(t, draft, draft.vocab, depth=0) for t in load_traces(EVAL / "traces" / "train" / level)]
        setup = replace(PAIR, compression=level)
        trained = train_heterospec(traces, setup)
        for draft_level in ("bf16", "nf4"):
            art = Artifact("heterospec", replace(setup, draft_compression=draft_level), trained.features, trained.params,
                           {**trained.trained_on, "source": "benchmarks/results/eval_qwen (training split), re-drafted by the bf16 draft"})
            path = art.save(shipped_path("heterospec", art.setup))
            print(path.relative_to(ROOT), "edges", [round(e, 2) for e in trained.params["edges"]])


if __name__ == "__main__":
    import sys

    main()
    if sys.argv[1:] != ["cost-aware"]:
        ship_heterospec()
