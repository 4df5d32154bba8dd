"""Greedy losslessness on the real pair: speckv fixed:N token ids == target.generate(do_sample=False).

Run: .venv/bin/python benchmarks/lossless.py --dtype float32 --per-category 4 --max-new-tokens 128
Only the target's dtype matters for exactness (the draft only proposes), so the draft may run
in bfloat16 (--draft-dtype) to save time. Exact equality is expected in float32 only (bf16 batched and one-token forwards round
differently); for other dtypes the script reports the agreement rate instead.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import speckv
from speckv.data.prompts import spec_bench
from speckv.models import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

CATEGORIES = ["coding", "math_reasoning", "qa", "writing", "reasoning"]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", help="target dtype")
    ap.add_argument("--draft-dtype", default="bfloat16")
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--per-category", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--controllers", default="fixed:4,fixed:8")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lossless_float32.json"))
    args = ap.parse_args()

    dec = speckv.Decoder(load_model(DEFAULT_TARGET, args.dtype), load_model(DEFAULT_DRAFT, args.draft_dtype))
    prompts = spec_bench(args.categories.split(","), args.per_category)
    controllers = args.controllers.split(",")
    # Resumable: rows already in --out (same settings) are kept and their prompts skipped.
    rows = []
    if args.out.is_file():
        previous = json.loads(args.out.read_text())
        if (previous["dtype"], previous["max_new_tokens"]) == (args.dtype, args.max_new_tokens):
            rows = previous["rows"]
    done = {r["id"] for r in rows}
    t0 = time.time()
    for i, p in enumerate(prompts, 1):
        if p.id in done:
            continue
        ids = dec.encode(p.text)
        x = torch.tensor([ids])
        with torch.inference_mode():
            ref = dec.target.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                            max_new_tokens=args.max_new_tokens)[0, len(ids):].tolist()
        row = {"id": p.id, "category": p.category, "prompt_len": len(ids), "reference_len": len(ref)}
        for c in controllers:
            got = dec.generate(ids, controller=c, max_new_tokens=args.max_new_tokens).token_ids
            row[c] = {"identical": got == ref, "agree_prefix": common_prefix(got, ref), "len": len(got)}
        rows.append(row)
        print(f"[{i}/{len(prompts)} {time.time() - t0:.0f}s] {p.category:15} {p.id}: "
              + " ".join(f"{c}={'identical' if row[c]['identical'] else 'DIFFERS@' + str(row[c]['agree_prefix'])}" for c in controllers),
              flush=True)
        save(args, rows, controllers)
    print(json.dumps(save(args, rows, controllers), indent=1))


def save(args, rows: list[dict], controllers: list[str]) -> dict:
    """Write results atomically after every prompt, so an interrupted run loses one prompt at most."""
    summary = {c: {"identical": sum(r[c]["identical"] for r in rows), "prompts": len(rows),
                   "token_agreement": sum(r[c]["agree_prefix"] for r in rows) / sum(r["reference_len"] for r in rows)}
               for c in controllers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps({"dtype": args.dtype, "draft_dtype": args.draft_dtype, "max_new_tokens": args.max_new_tokens, "summary": summary, "rows": rows}, indent=1))
    os.replace(tmp, args.out)
    return summary


if __name__ == "__main__":
    main()
