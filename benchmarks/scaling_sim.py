"""Batch scaling, simulated from our calibrated cost models: the best draft length and the speedup of
speculation as the batch grows. Pure arithmetic: no model runs, no timing, seconds on one core.

Inputs: the committed cost models benchmarks/results/eval_qwen/cost/{bf16,int8,nf4}.json (Qwen2.5-Coder
1.5B target at that level, 0.5B bf16 draft, 2-core CPU), fitted at batch size 1:
    draft ms  = d0[k>0] + k (d1 + d2 ctx/1000)          verify ms = v0 + v1 n + v2 ctx/1000 + v3 n ctx/1000
Nothing here was measured at batch size > 1. The extension to a batch of B requests, each verifying
n = gamma + 1 tokens at context ctx, is an ASSUMPTION:
  * Weights, target: a forward over T = B n tokens costs v0 + v1 T, the batch-1 fit read as a function
    of tokens per forward (fitted for T = 1..17; v0 / v1 is where per-token work overtakes the fixed cost).
  * Weights, draft: only one-token draft forwards were measured (d1). The draft runs in bf16 at every
    level, so a forward over T = B tokens grows like the bf16 target's: d1 (v0 + v1 T) / (v0 + v1) with
    the bf16 fit's v0, v1.
  * Knee (the one free parameter, tokens per forward): beyond it both grow in proportion to T
    (compute-bound), W(T) = W(knee) T / knee, in case the slope steepens past the fitted range.
  * Context: the ctx terms are per request (each request reads its own KV cache and runs its own
    attention): B (v2 + v3 n) ctx/1000 per verification, B d2 ctx/1000 per draft token.
  * One loop overhead o0 per step; controller time ignored; every request drafts the same gamma.
  verify_ms(B, n) = W_target(B n) + B (v2 + v3 n) ctx/1000
  draft_ms(B, k)  = d0[k>0] + k (W_draft(B) + B d2 ctx/1000)
  E[tokens per request per step] = (1 - a^(gamma+1)) / (1 - a)      (Leviathan et al. 2023, i.i.d. acceptance a)
  throughput = B E / (draft_ms + verify_ms + o0);  speedup = best gamma's throughput / gamma = 0's.

    .venv/bin/python benchmarks/scaling_sim.py        # writes benchmarks/results/scaling_sim.{json,png}
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from speckv.cost import CostModel

ROOT = Path(__file__).resolve().parent.parent
COST_DIR = ROOT / "benchmarks/results/eval_qwen/cost"
OUT = ROOT / "benchmarks/results/scaling_sim.json"
LEVELS = ("bf16", "int8", "nf4")
BATCHES = (1, 2, 4, 8, 16, 32, 64)
ALPHAS = (0.6, 0.8, 0.9)
KNEE, CTX = 64.0, 270  # CTX: the evaluation's mean step context (267-289 by level)
VARIANTS = (("knee 16", 16.0, CTX), ("knee inf", math.inf, CTX), ("ctx 0", KNEE, 0), ("ctx 1024", KNEE, 1024))


def weights_ms(c0: float, c1: float, tokens: int, knee: float) -> float:
    """c0 + c1 T up to the knee, proportional to T beyond it."""
    return c0 + c1 * tokens if tokens <= knee else (c0 + c1 * knee) * tokens / knee


def step_ms(c: CostModel, draft_shape: tuple[float, float], batch: int, gamma: int, ctx: int, knee: float) -> float:
    (d0, _, d2), (v0, v1, v2, v3), o0 = c.draft, c.verify, c.overhead[0]
    n = gamma + 1
    verify = weights_ms(v0, v1, batch * n, knee) + batch * (v2 + v3 * n) * ctx / 1000
    draft = d0 + gamma * (weights_ms(*draft_shape, batch, knee) + batch * d2 * ctx / 1000) if gamma else 0.0
    return draft + verify + o0


def expected_tokens(alpha: float, gamma: int) -> float:
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def best(c: CostModel, shape, batch: int, alpha: float, ctx: int, knee: float, max_gamma: int) -> dict:
    rate = [batch * expected_tokens(alpha, g) / step_ms(c, shape, batch, g, ctx, knee) for g in range(max_gamma + 1)]
    g = max(range(len(rate)), key=rate.__getitem__)
    return {"best_gamma": g, "speedup": round(rate[g] / rate[0], 3),
            "tokens_per_s": round(rate[g] * 1000, 2), "tokens_per_s_no_spec": round(rate[0] * 1000, 2)}


def table(rows: list[dict], key: str) -> str:
    """Markdown: one row per (level, key), one column per batch size, cells 'best gamma: speedup'."""
    head = sorted({r["batch"] for r in rows})
    lines = [f"| level | {key} | " + " | ".join(f"B={b}" for b in head) + " |", "|---|---|" + "---|" * len(head)]
    for lv in LEVELS:
        for v in dict.fromkeys(r[key] for r in rows):
            cells = {r["batch"]: r for r in rows if r["compression"] == lv and r[key] == v}
            lines.append(f"| {lv} | {v} | " + " | ".join(
                f"{cells[b]['best_gamma']}: {cells[b]['speedup']:.2f}x" for b in head) + " |")
    return "\n".join(lines)


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=72)
    for lv, style in zip(LEVELS, ("-", "--", ":")):
        for a, color in zip(ALPHAS, ("C0", "C1", "C2")):
            rs = [r for r in rows if r["compression"] == lv and r["alpha"] == a]
            b = [r["batch"] for r in rs]
            axes[0].plot(b, [r["speedup"] for r in rs], style, color=color, label=f"{lv} a={a}")
            axes[1].plot(b, [r["best_gamma"] for r in rs], style, color=color)
    for ax, label in zip(axes, ("speedup over no speculation", "best gamma")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
    axes[0].axhline(1, color="grey", lw=0.5)
    axes[0].legend(fontsize=6, ncol=3)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--knee", type=float, default=KNEE, help="tokens per forward where compute-bound starts")
    ap.add_argument("--ctx", type=int, default=CTX, help="context length of every request")
    ap.add_argument("--max-gamma", type=int, default=16)
    ap.add_argument("--no-png", action="store_true")
    args = ap.parse_args()

    models = {lv: CostModel.load(COST_DIR / f"{lv}.json") for lv in LEVELS}
    v0, v1 = models["bf16"].verify[:2]  # the bf16 forward's growth with tokens, scaled to each level's d1
    shapes = {lv: (c.draft[1] * v0 / (v0 + v1), c.draft[1] * v1 / (v0 + v1)) for lv, c in models.items()}
    rows = [{"compression": lv, "alpha": a, "batch": b,
             **best(c, shapes[lv], b, a, args.ctx, args.knee, args.max_gamma)}
            for lv, c in models.items() for a in ALPHAS for b in BATCHES]
    variant_rows = [{"compression": lv, "variant": name, "batch": b,
                     **best(c, shapes[lv], b, 0.8, ctx, knee, args.max_gamma)}
                    for lv, c in models.items() for name, knee, ctx in VARIANTS for b in BATCHES]
    result = {
        "assumptions": __doc__,
        "measured_at_batch_1_only": True,
        "params": {"knee_tokens": args.knee, "ctx": args.ctx, "max_gamma": args.max_gamma,
                   "alphas": ALPHAS, "batch_sizes": BATCHES},
        "cost_models": {lv: {"path": str((COST_DIR / f"{lv}.json").relative_to(ROOT)), "draft": c.draft,
                             "verify": c.verify, "overhead": c.overhead,
                             "draft_forward_ms_c0_c1": shapes[lv]} for lv, c in models.items()},
        "results": rows,
        "sensitivity_alpha_0.8": {"variants": [{"name": n, "knee_tokens": None if math.isinf(k) else k, "ctx": x}
                                               for n, k, x in VARIANTS],
                                  "rows": variant_rows},
    }
    write_atomic(OUT, lambda tmp: tmp.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n"))
    print(f"best gamma: speedup over no speculation (knee {args.knee:g} tokens, ctx {args.ctx})\n")
    print(table(rows, "alpha"))
    print(f"\nsensitivity at alpha 0.8 (default: knee {KNEE:g}, ctx {CTX})\n")
    print(table(variant_rows, "variant"))
    if not args.no_png:
        plot(rows, OUT.with_suffix(".png"))
    print(f"\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
