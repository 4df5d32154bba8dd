"""Issue 15's acceptance run: tree drafting against chains, live, interleaved per prompt, one
target and one draft in memory (the NF4 draft that `auto` uses on CPU).

Methods (label: drafter, controller): `autoregressive` (the target alone); `chain-fixed:5` (model,
fixed:5: the chain at the trees' base draft depth); `chain-cost-aware` (model, auto: cost-aware
chains); `tree` (model, tree:depth=5,nodes=16,width=4); `tree-rerank` (the same re-ranked,
EAGLE-2); `heterospec` (model); `cost-tree` (model); `auto` (hybrid, auto). Held-out prompts
(never among the shipped artifacts' training prompts), `per` per task for code, math, chat and
summarization, greedy, 128 new tokens; paired bootstrap CIs over prompts. Run alone:

    .venv/bin/python benchmarks/tree_speed.py --out benchmarks/results/tree_speed_bf16.json
    .venv/bin/python benchmarks/tree_speed.py --compression nf4 --out benchmarks/results/tree_speed_nf4.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from drafter_choice import held_out
from speckv.api import Decoder, default_draft_level
from speckv.files import write_json
from speckv.measure.stats import live_summary
from speckv.models.draft import load_draft
from speckv.models.load import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

TASKS = ("code", "math", "chat", "summarization")
METHODS = {
    "autoregressive": ("model", "autoregressive"),
    "chain-fixed:5": ("model", "fixed:5"),
    "chain-cost-aware": ("model", "auto"),
    "tree": ("model", "tree:depth=5,nodes=16,width=4"),
    "tree-rerank": ("model", "tree:depth=5,nodes=16,width=4,rerank"),
    "heterospec": ("model", "heterospec"),
    "cost-tree": ("model", "cost-tree"),
    "auto": ("auto", "auto"),
}
#: (a, b) pairs whose paired ratio the issue asks for
PAIRS = [("heterospec", "chain-cost-aware"), ("cost-tree", "chain-cost-aware"), ("auto", "autoregressive"),
         ("tree", "chain-fixed:5"), ("tree-rerank", "chain-fixed:5"), ("cost-tree", "autoregressive"),
         ("heterospec", "autoregressive"), ("auto", "chain-cost-aware"), ("cost-tree", "auto")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per", type=int, default=4)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--compression", default="bf16")
    ap.add_argument("--draft-compression", default=None, help="default: what auto loads on CPU (NF4 at bf16)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    labels = args.methods.split(",")
    target = load_model(DEFAULT_TARGET, args.compression, "cpu", "torch")
    draft_level = args.draft_compression or default_draft_level(args.compression, "cpu") or args.compression
    draft = load_draft(DEFAULT_DRAFT, draft_level, "cpu", "torch")
    decoders = {label: Decoder(target, draft, METHODS[label][1], drafter=METHODS[label][0], probe=True) for label in labels}
    prompts = held_out(args.per, args.seed, args.tasks.split(","))
    for label in labels:  # untimed warm-up: weights paged in, kernels chosen
        decoders[label].generate("Say hello.", max_new_tokens=8)
    rows = []
    t_start = time.time()
    for i, (task, prompt) in enumerate(prompts):
        ids = decoders[labels[0]].encode(prompt.text)
        for label in labels[i % len(labels):] + labels[: i % len(labels)]:
            res = decoders[label].generate(ids, max_new_tokens=args.max_new_tokens)
            st = res.steps
            rows.append({"controller": label, "prompt_id": prompt.id, "task": task, "prompt_len": len(ids),
                         "new_tokens": res.stats.new_tokens, "wall_s": res.stats.wall_s,
                         "mean_accepted": res.stats.mean_accepted, "steps": len(st),
                         "tree_steps": sum(s.tree_depth > 0 for s in st),
                         "mean_nodes": sum(s.drafted for s in st) / max(1, len(st)),
                         "mean_depth": sum(s.tree_depth for s in st) / max(1, sum(s.tree_depth > 0 for s in st)),
                         "draft_ms": res.stats.draft_ms, "verify_ms": res.stats.verify_ms,
                         "drafters": pd.Series([s.drafter for s in st]).value_counts().to_dict(),
                         "tokens": list(map(int, res.token_ids))})
            print(f"{i + 1}/{len(prompts)} {task:13s} {label:18s} {res.stats.tokens_per_s:6.2f} tok/s "
                  f"acc/step {res.stats.mean_accepted:.2f}", flush=True)
    runs = pd.DataFrame(rows)
    table = live_summary(runs, labels, PAIRS)
    summary = {"live_s": round(time.time() - t_start), "tokens_per_s": table["tokens_per_s"],
               "mean_accepted_per_step": {m: round(float(runs[runs.controller == m].mean_accepted.mean()), 3) for m in labels}}
    per_task, cis, same = table["per_task"], table["ratio_ci"], table.get("same_output_as_autoregressive")
    payload = {"summary": summary, "ratio_ci": cis, "per_task": per_task, "same_output_as_autoregressive": same,
               "rows": rows, "config": {"per": args.per, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                                        "compression": args.compression, "draft_compression": draft_level,
                                        "methods": {m: METHODS[m] for m in labels}, "threads": target.runner.threads}}
    if args.out:
        write_json(args.out, payload)
    print(json.dumps({k: payload[k] for k in ("summary", "ratio_ci", "per_task", "same_output_as_autoregressive")}, indent=1))


if __name__ == "__main__":
    main()
