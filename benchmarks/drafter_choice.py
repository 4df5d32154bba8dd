"""Issue 13's acceptance run: `auto` (hybrid drafting, NF4 draft, shipped artifacts, probed costs)
against the target alone, transformers' assisted generation and prompt lookup, and today's
chain-only cost-aware with the same NF4 draft; live, interleaved per prompt, one target in memory.

Held-out prompts: `per` per task for code, math, chat, summarization, edit, rag and translation
(chosen by seed, never one the shipped artifacts were trained on). After the live runs: the
drafter-choosing oracle replayed on each prompt (match bits of the NF4 draft and of prompt lookup
along the target's own output, priced by a cost model fitted to this run's live steps), and paired
bootstrap CIs over prompts. Run alone on a quiet machine:

    .venv/bin/python benchmarks/drafter_choice.py --out benchmarks/results/drafter_choice_bf16.json
    .venv/bin/python benchmarks/drafter_choice.py --compression nf4 --methods autoregressive,auto,fixed:4 ...
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from speckv.api import Decoder, default_draft_level
from speckv.bench.side_by_side import run_method
from speckv.control.artifact import Setup, shipped_path
from speckv.cost import CalibrationRun, CostModel
from speckv.data.tasks import task_pool
from speckv.files import write_json
from speckv.measure.replay import oracle, replay
from speckv.measure.stats import aggregate_tps, paired_ratio_ci
from speckv.measure.trace import collect_trace
from speckv.models.draft import load_draft
from speckv.models.load import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

TASKS = ("code", "math", "chat", "summarization", "edit", "rag", "translation")
#: label -> (drafter, draft compression or None for no draft, controller spec); "nf4-v32768": NF4
#: draft with a 32k-token head; "default": the level speckv.load picks on this machine (NF4 where
#: bitsandbytes runs it fast, else bf16: api.default_draft_level)
METHODS = {
    "autoregressive": (None, None, "autoregressive"),
    "auto": ("auto", "default", "auto"),
    "auto-v32768": ("auto", "nf4-v32768", "auto"),
    "auto-bf16": ("auto", "bf16", "auto"),
    "auto-lookup": ("lookup", None, "auto"),
    "chain-cost-aware-nf4": ("model", "nf4", "auto"),
    "fixed:4": ("model", "nf4", "fixed:4"),
    "hf-assisted": (None, "bf16", "hf-assisted"),
    "hf-assisted:4": (None, "bf16", "hf-assisted:4"),
    "hf-lookup": (None, None, "hf-lookup"),
}
#: what issue 13's acceptance compares (the default; the other labels are for pilots)
ACCEPTANCE = ("autoregressive", "auto", "chain-cost-aware-nf4", "hf-assisted", "hf-assisted:4", "hf-lookup")


def held_out(per: int, seed: int, tasks=TASKS) -> list[tuple[str, object]]:
    """`per` prompts per task, none of them among the shipped artifacts' training prompts."""
    seen = set()
    for path in shipped_path("cost-aware", Setup("x", "y", "bf16")).parent.glob("*.json"):
        seen |= set(json.loads(path.read_text())["trained_on"]["prompts"])
    out = []
    for task in tasks:
        pool = [p for p in task_pool(task) if p.id not in seen]
        out += [(task, p) for p in random.Random(f"{seed}:{task}").sample(pool, per)]
    return out


def oracle_summary(runs: pd.DataFrame, prompts, cost: CostModel, dec: Decoder, target, max_new_tokens: int) -> dict:
    """The drafter-choosing oracle's tokens/s over the prompts, replayed along the target's own
    output (the run's `autoregressive` rows) under `cost`, and `auto`'s share of it. The draft
    attends to the prompt as `auto`'s does (its long-context window) and pays its reads as live
    drafts do; `*_free_reads` prices the same oracle as sessions before 15 did, reads free."""
    alone = runs[runs.controller == "autoregressive"].set_index("prompt_id")
    free = replace(cost, read=(0.0,))
    totals = {"": [0.0, 0.0], "_free_reads": [0.0, 0.0]}
    per_task: dict[str, list[float]] = {}
    for task, prompt in prompts:
        output = list(alone.loc[prompt.id, "tokens"])
        ids = dec.encode(prompt.text)
        attended = dec.engine.draft.attended(len(ids))
        tr = collect_trace(target.runner, dec.draft.runner, ids, max_new_tokens, dec.stop_ids, depth=0, output=output)
        for key, priced in (("", cost), ("_free_reads", free)):
            replayed = replay(tr, oracle(tr, priced, "hybrid", attended=attended), priced, "hybrid", attended)
            for s in replayed:
                s.control_ms = 0.0
            wall = priced.wall_s(replayed, len(ids))
            totals[key][0] += len(output)
            totals[key][1] += wall
            if not key:
                per_task.setdefault(task, [0.0, 0.0])
                per_task[task][0] += len(output)
                per_task[task][1] += wall
    auto = aggregate_tps(runs[runs.controller == "auto"])
    out = {"oracle_per_task": {t: round(n / w, 2) for t, (n, w) in per_task.items()}}
    for key, (n, w) in totals.items():
        out[f"oracle_tokens_per_s{key}"] = round(n / w, 2)
        out[f"auto_share_of_oracle{key}"] = round(auto / (n / w), 3)
    return out


def oracle_again(path: Path, out: Path | None) -> None:
    """The oracle of a committed run, replayed again from its rows (the target's outputs, `auto`'s
    live rate) and its fitted cost model: a change to how replay prices steps, measured on the
    same run without timing anything live."""
    run = json.loads(path.read_text())
    config, runs = run["config"], pd.DataFrame(run["rows"])
    prompts = held_out(config["per"], config["seed"], tuple(dict.fromkeys(runs.task)))
    target = load_model(DEFAULT_TARGET, config["compression"], "cpu")
    level = re.search(r"draft_compression='([^']+)'", config["setups"]["auto"]).group(1)  # as that run loaded it
    dec = Decoder(target, load_draft(DEFAULT_DRAFT, level, "cpu"), "auto", drafter="auto")
    cost = CostModel.from_dict(run["summary"]["cost_model"])
    summary = oracle_summary(runs, prompts, cost, dec, target, config["max_new_tokens"])
    payload = {"of": str(path), "auto_tokens_per_s": run["summary"]["tokens_per_s"]["auto"], **summary}
    if out:
        write_json(out, payload)
    print(json.dumps(payload, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per", type=int, default=4)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--compression", default="bf16")
    ap.add_argument("--methods", default=",".join(ACCEPTANCE))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--oracle-of", type=Path, help="a committed run's results: replay its oracle again (no live runs)")
    args = ap.parse_args()
    if args.oracle_of:
        return oracle_again(args.oracle_of, args.out)
    labels = args.methods.split(",")
    target = load_model(DEFAULT_TARGET, args.compression, "cpu")
    # Ours draft with what speckv loads (models/draft.py: an int8 head, or "nf4-v32768": a 32k-token
    # head); transformers' methods with the draft as transformers loads it. One draft per kind, shared.
    drafts, decoders, drafts_level = {}, {}, {}
    for label in labels:
        drafter, level, spec = METHODS[label]
        if level == "default":
            level = default_draft_level("bf16", "cpu") or "bf16"
        drafts_level[label] = level
        external = spec.startswith("hf-")
        if level is not None and (level, external) not in drafts:
            base, _, vocab = level.partition("-v")
            drafts[level, external] = (load_model(DEFAULT_DRAFT, base, "cpu") if external else
                                       load_draft(DEFAULT_DRAFT, base, "cpu", vocab=int(vocab) if vocab else None))
        draft = drafts.get((level, external))
        if external or spec == "autoregressive":
            decoders[label] = Decoder(target, draft, "autoregressive", drafter="model" if draft else "auto")
        else:
            decoders[label] = Decoder(target, draft, spec, drafter=drafter, probe=True)
    prompts = held_out(args.per, args.seed, args.tasks.split(","))
    rows, steps = [], {}
    t_start = time.time()
    for i, (task, prompt) in enumerate(prompts):
        ids = decoders[labels[0]].encode(prompt.text)
        for label in labels[i % len(labels):] + labels[: i % len(labels)]:
            dec, spec = decoders[label], METHODS[label][2]
            if spec.startswith("hf-") or spec == "autoregressive":
                r = run_method(dec, spec, prompt.id, ids, args.max_new_tokens, task)
                row = {"tokens": r.token_ids, "new_tokens": r.new_tokens, "wall_s": r.wall_s, "mean_accepted": r.mean_accepted}
            else:
                res = dec.generate(ids, max_new_tokens=args.max_new_tokens)
                steps[(label, prompt.id)] = CalibrationRun(len(ids), res.steps, res.stats.wall_s, res.stats.prefill_ms)
                by = pd.Series([s.drafter for s in res.steps]).value_counts().to_dict()
                row = {"tokens": res.token_ids, "new_tokens": res.stats.new_tokens, "wall_s": res.stats.wall_s,
                       "mean_accepted": res.stats.mean_accepted, "steps_by_drafter": by}
            rows.append({"controller": label, "prompt_id": prompt.id, "task": task, "prompt_len": len(ids), **row})
            print(f"{i + 1}/{len(prompts)} {task:13s} {label:22s} {row['new_tokens'] / row['wall_s']:6.2f} tok/s", flush=True)
    live_s = time.time() - t_start
    runs = pd.DataFrame(rows)
    summary = {"live_s": round(live_s), "tokens_per_s": {m: round(aggregate_tps(runs[runs.controller == m]), 2) for m in labels}}
    per_task = {t: {m: round(aggregate_tps(runs[(runs.task == t) & (runs.controller == m)]), 2) for m in labels}
                for t in dict.fromkeys(runs.task)}
    cis = {}
    for a in [m for m in ("auto",) if m in labels]:
        for b in [m for m in labels if m != a]:
            ci = paired_ratio_ci(runs, a, b)
            cis[f"{a} / {b}"] = [round(ci.ratio, 3), round(ci.low, 3), round(ci.high, 3)]
    hf = [m for m in ("hf-assisted", "hf-assisted:4", "hf-lookup") if m in labels]
    if hf:
        best = max(hf, key=lambda m: summary["tokens_per_s"][m])
        summary["best_transformers"] = best
    # The drafter-choosing oracle, replayed along the target's own output with this run's costs.
    if "auto" in labels and "autoregressive" in labels:
        # fitted to the runs that drafted with auto's own draft (the chain's NF4 one may differ: bf16 where
        # bitsandbytes has no fast NF4 kernel)
        live = [r for (label, _), r in steps.items()
                if label in ("auto", "chain-cost-aware-nf4") and drafts_level[label] == drafts_level["auto"]]
        cost = CostModel.fit(live, {"fitted_on": "this run's live auto/chain steps"})
        summary |= oracle_summary(runs, prompts, cost, decoders["auto"], target, args.max_new_tokens)
        summary["cost_model"] = cost.to_dict()
    payload = {"summary": summary, "ratio_ci": cis, "per_task": per_task,
               "rows": [{k: v for k, v in r.items() if k != "tokens"} | {"tokens": list(map(int, r["tokens"]))} for r in rows],
               "config": {"per": args.per, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                          "compression": args.compression, "methods": labels, "threads": torch.get_num_threads(),
                          "setups": {m: str(d.setup) for m, d in decoders.items()}}}
    if args.out:
        write_json(args.out, payload)
    print(json.dumps({k: payload[k] for k in ("summary", "ratio_ci", "per_task")}, indent=1))


if __name__ == "__main__":
    main()
