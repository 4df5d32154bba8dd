"""How high trees raise the ceiling here: the chain oracle against the tree oracle (spine trees
that add the draft's runners-up where a run ends) replayed on the committed evaluation's held-out
traces, re-drafted by the draft `auto` uses (one teacher-forced pass each), and priced by this
machine's probed cost model for that setup. Also: where the draft's top-1 is wrong, how often the
target's token is its second choice, or within its best 4 and 8.

    .venv/bin/python benchmarks/tree_oracle.py --out benchmarks/results/tree_oracle_bf16.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speckv.api import default_draft_level
from speckv.control import cost_path
from speckv.control.artifact import Setup
from speckv.cost import CostModel
from speckv.errors import SpeckvError
from speckv.files import write_json
from speckv.measure.replay import oracle, replay
from speckv.measure.trace import load_traces, redraft
from speckv.models.load import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

EVAL = Path(__file__).resolve().parent / "results" / "eval_qwen"


def path_ceiling(tr, cost, width: int) -> tuple[int, float]:
    """Tokens and ms of the best split into steps when a step may accept any run of positions
    whose target token is within the draft's best `width` there (the draft's rows along the
    target's path are the trace's on-path rows, so this holds for trees that branch anywhere),
    paying rank + 1 nodes per level, one draft forward per level and the verification."""
    out, n, start = tr.output_ids, len(tr.output_ids), len(tr.prompt_ids)
    rank = [next((i for i, tok in enumerate(top[:width]) if tok == t), None) for t, top in zip(out, tr.top_tokens)]
    best = [0.0] * (n + 1)
    for p in range(n - 1, -1, -1):
        ctx = start + p
        options = [cost.verify_ms(1, ctx) + cost.overhead_ms(p) + best[p + 1]]
        nodes, k = 0, 0
        while p + k < n - 1 and rank[p + k] is not None and k < 32:
            nodes += rank[p + k] + 1
            k += 1
            options.append(cost.drafter_ms("model", k, ctx) + cost.verify_ms(nodes + 1, ctx) + cost.overhead_ms(p)
                           + best[p + k + 1])
        best[p] = min(options)
    return n, best[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compression", default="bf16")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    level = default_draft_level(args.compression, "cpu") or args.compression
    setup = Setup(DEFAULT_TARGET, DEFAULT_DRAFT, args.compression, level, "cpu")
    if not cost_path(setup).is_file():
        raise SpeckvError(f"no probed cost model for {setup.slug()}: run speckv generate once with this setup")
    cost = CostModel.load(cost_path(setup))
    draft = load_model(DEFAULT_DRAFT, level, "cpu", "torch").runner
    traces = [redraft(t, draft, draft.vocab) for t in load_traces(EVAL / "traces" / "test" / args.compression)]
    misses = second = top4 = top8 = 0
    for tr in traces:
        for t, top in zip(tr.output_ids, tr.top_tokens):
            if top[0] != t:
                misses += 1
                second += top[1] == t
                top4 += t in top[:4]
                top8 += t in top[:8]
    result = {"setup": setup.slug(), "traces": len(traces), "positions": sum(len(t.output_ids) for t in traces),
              "misses": misses, "target_is_2nd": round(second / misses, 3), "in_top4": round(top4 / misses, 3),
              "in_top8": round(top8 / misses, 3), "tokens_per_s": {}}
    for label, width in (("chain oracle", 0), ("tree oracle w2", 2), ("tree oracle w4", 4), ("tree oracle w8", 8)):
        tokens = ms = 0.0
        for tr in traces:
            steps = replay(tr, oracle(tr, cost, "model", tree_width=width), cost, "model")
            tokens += sum(s.emitted for s in steps)
            ms += sum(s.draft_ms + s.verify_ms + cost.overhead_ms(s.context_len - len(tr.prompt_ids)) for s in steps)
        result["tokens_per_s"][label] = round(tokens / ms * 1000, 2)
    for width in (2, 4, 8):  # any tree of that width along the target's own path: the ceiling of beams too
        tokens = ms = 0.0
        for tr in traces:
            t_, m_ = path_ceiling(tr, cost, width)
            tokens, ms = tokens + t_, ms + m_
        result["tokens_per_s"][f"path ceiling w{width}"] = round(tokens / ms * 1000, 2)
    alone = sum(len(t.output_ids) for t in traces) / sum(
        cost.verify_ms(1, len(t.prompt_ids) + p) + cost.overhead_ms(p) for t in traces for p in range(len(t.output_ids))) * 1000
    result["tokens_per_s"]["target alone (predicted)"] = round(alone, 2)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
