"""What trees cost: verifying n tree nodes in one target forward (n = 1..64) and one draft level
over a frontier of width w, per compression level, after a 300-token context.

torch (bf16, int8, nf4) verifies under a 4D tree mask; llama.cpp (q4_k_m, bf16) is timed as the
plain (n + 1)-token forward, the least a tree of n nodes costs there (llama.cpp computes every row
of a batch whatever its mask). Run alone on a quiet machine:

    .venv/bin/python benchmarks/tree_costs.py --out benchmarks/results/tree_costs.json
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from speckv.files import write_json
from speckv.measure.latency import tree_ms
from speckv.models.load import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

SETUPS = {"torch": ("bf16", "int8", "nf4"), "llamacpp": ("q4_k_m", "bf16")}
NODES = (1, 2, 4, 8, 12, 16, 20, 24, 32, 48, 64)
WIDTHS = (1, 2, 4, 8, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="torch,llamacpp")
    args = ap.parse_args()
    rows = []
    for backend in args.backends.split(","):
        for level in SETUPS[backend]:
            for name, sizes in ((DEFAULT_TARGET, NODES), (DEFAULT_DRAFT, WIDTHS)):
                t0 = time.perf_counter()
                loaded = load_model(name, level, "cpu", backend)
                ms = tree_ms(loaded.runner, args.context, sizes, 4, args.repeats)
                part = "verify" if name == DEFAULT_TARGET else "level"
                if backend == "llamacpp" and name == DEFAULT_DRAFT:
                    part = "verify"  # no tree levels there: the plain forward of w + 1 tokens
                row = {"backend": backend, "level": level, "model": name, "threads": loaded.runner.threads,
                       "kind": part, "ms": {str(n): round(v, 2) for n, v in ms[part].items()}}
                rows.append(row)
                print(f"{backend:9} {level:7} {name:30} {part:6} " + " ".join(f"{n}:{v:.0f}" for n, v in ms[part].items())
                      + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
                del loaded
    write_json(args.out, {"context": args.context, "repeats": args.repeats, "width": 4,
                          "machine": platform.processor() or platform.machine(), "rows": rows})


if __name__ == "__main__":
    main()
