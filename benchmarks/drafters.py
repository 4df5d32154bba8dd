"""Every drafter's cost and acceptance, at each target compression, measured in one run.

Cost: median ms per draft token (one cached forward after a 300-token context) and weight memory,
for the 0.5B draft at bf16, int8 and NF4, the NF4 draft with a reduced-vocabulary head (FR-Spec:
the N most frequent tokens), and prompt lookup (numpy on the text). Acceptance: on the committed
evaluation's held-out traces (benchmarks/results/eval_qwen/traces/test/<level>: the target's greedy
output at that compression), the share of output positions where the drafter's next token is the
target's (teacher-forced: what a chain's first token faces), and the tokens a fixed:4 step would
accept on average. torch.compile of the bf16 draft is tried with --compile (compile time included).
Run alone on a quiet machine:

    .venv/bin/python benchmarks/drafters.py --out benchmarks/results/drafters.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from speckv.drafting.lookup import LookupSource
from speckv.backends import as_runner
from speckv.files import write_json
from speckv.measure.latency import forward_ms
from speckv.measure.probe import lookup_ms
from speckv.measure.trace import load_traces
from speckv.models.load import load_model
from speckv.models.registry import DEFAULT_DRAFT

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "benchmarks" / "results" / "eval_qwen" / "traces" / "test"
LEVELS = ("bf16", "int8", "nf4")


def fixed_steps(hits: list[bool], gamma: int = 4) -> float:
    """Mean drafted tokens accepted per step of fixed:gamma given per-position first-token hits
    (a chain's i-th token is accepted iff positions p..p+i all hit)."""
    run = [0] * (len(hits) + 1)
    for p in range(len(hits) - 1, -1, -1):
        run[p] = run[p + 1] + 1 if hits[p] else 0
    p, accepted, steps = 0, 0, 0
    while p < len(hits):
        a = min(run[p], gamma, len(hits) - p - 1)
        accepted, steps, p = accepted + a, steps + 1, p + a + 1
    return accepted / max(steps, 1)


@torch.inference_mode()
def model_hits(model: torch.nn.Module, traces) -> list[list[bool]]:
    """Teacher-forced: does the draft's top-1 after prompt + output[:i] equal output[i]?"""
    out = []
    runner = as_runner(model)
    vocab = min(runner.vocab, 151665)
    for tr in traces:
        ids = list(tr.prompt_ids) + tr.output_ids
        rows = runner.sequence().forward(ids[:-1], len(tr.output_ids), vocab)
        out.append((rows.argmax(-1) == torch.tensor(tr.output_ids)).tolist())
    return out


def lookup_hits(traces) -> tuple[list[list[bool]], float, float]:
    """Lookup's first-token hits per position, the share of positions where it offers anything,
    and fixed:4's accepted tokens per step when every step drafts by lookup."""
    drafter = LookupSource().new(0, None)
    hits, offered, acc, steps = [], 0, 0, 0
    for tr in traces:
        out, prompt = tr.output_ids, list(tr.prompt_ids)
        row = []
        for p in range(len(out)):
            offer = drafter.offer(prompt + out[:p], 1)
            offered += bool(offer)
            row.append(bool(offer) and offer[0].token == out[p])
        hits.append(row)
        p = 0
        while p < len(out):  # fixed:4 with lookup: the span it copies, checked token by token
            offer = drafter.offer(prompt + out[:p], min(4, len(out) - p - 1))
            a = 0
            while a < len(offer) and offer[a].token == out[p + a]:
                a += 1
            acc, steps, p = acc + a, steps + 1, p + a + 1
    positions = sum(len(t.output_ids) for t in traces)
    return hits, offered / positions, acc / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--vocab", type=int, nargs="*", default=[32768])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the bf16 draft")
    args = ap.parse_args()
    traces = {level: load_traces(TRACES / level) for level in LEVELS}
    rows = []

    def record(name: str, ms: float | None, mib: float | None, hits_for, extra=None):
        row = {"drafter": name, "ms_per_token": ms, "memory_mib": mib, **(extra or {})}
        for level in LEVELS if hits_for else ():  # None: same tokens as a row above (compile)
            hits = hits_for(traces[level])
            flat = [h for r in hits for h in r]
            row[f"agree_{level}"] = round(float(np.mean(flat)), 4)
            row[f"fixed4_accepted_{level}"] = round(float(np.mean([fixed_steps(r) for r in hits])), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)

    for level in ("bf16", "int8", "nf4"):
        loaded = load_model(DEFAULT_DRAFT, level, "cpu")
        ms = forward_ms(loaded.model, context=300, new_tokens=(1,), repeats=7)[1]
        record(f"model {level}", round(ms, 2), round(loaded.model.get_memory_footprint() / 2**20), lambda t: model_hits(loaded.model, t))
        if level == "nf4":
            from speckv.data.token_freq import token_ranking
            from speckv.models.reduced_head import reduce_head

            ranking = token_ranking(loaded.tokenizer)
            for n in args.vocab:
                small = reduce_head(loaded, n, ranking)
                ms = forward_ms(small.model, context=300, new_tokens=(1,), repeats=7)[1]
                record(f"model nf4, head {n}", round(ms, 2), None, lambda t: model_hits(small.model, t), {"vocab": n})
            from speckv.models.int8_head import quantize_head

            quantize_head(loaded)  # what load_draft gives (models/draft.py): the full head in int8
            ms = forward_ms(loaded.model, context=300, new_tokens=(1,), repeats=7)[1]
            record("model nf4, int8 head", round(ms, 2), round(loaded.model.get_memory_footprint() / 2**20),
                   lambda t: model_hits(loaded.model, t))
        if level == "bf16" and args.compile:
            t0 = time.perf_counter()
            compiled = torch.compile(loaded.model, dynamic=True)
            try:
                ms = forward_ms(compiled, context=300, new_tokens=(1,), repeats=7)[1]
                record("model bf16, torch.compile", round(ms, 2), None, None, {"compile_s": round(time.perf_counter() - t0, 1)})
            except Exception as exc:  # report, not crash: compile support on CPU varies
                rows.append({"drafter": "model bf16, torch.compile", "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        del loaded

    per_step, per_token = lookup_ms()
    cache = {}

    def lookup_for(t):
        key = id(t)
        if key not in cache:
            cache[key] = lookup_hits(t)
        return cache[key][0]

    record("lookup", round(per_step + per_token, 3), 0, lookup_for)
    for level in LEVELS:
        _, offered, acc = lookup_hits(traces[level])
        rows[-1][f"offered_{level}"] = round(offered, 3)
        rows[-1][f"fixed4_accepted_{level}"] = round(acc, 3)
    payload = {"rows": rows, "config": {"threads": torch.get_num_threads(), "torch": torch.__version__, "context": 300,
                                        "traces": {level: len(t) for level, t in traces.items()}}}
    if args.out:
        write_json(args.out, payload)
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
