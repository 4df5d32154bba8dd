"""What one forward costs, per backend x compression level, for 1..16 new tokens: the table every
speculation decision on this machine rests on (a draft of k tokens is verified by a (k+1)-token
forward; it pays only if that costs less than the tokens it saves).

Median ms of a cached forward over n new tokens after a 300-token context, for the built-in target
and draft, on transformers (bf16, int8, nf4) and llama.cpp (q4_k_m, q8_0, bf16, f16). Run alone
on a quiet machine (llama.cpp's threads spin; any other load ruins the numbers):

    .venv/bin/python benchmarks/forward_costs.py --out benchmarks/results/forward_costs.json
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from speckv.files import write_json
from speckv.measure.latency import forward_ms
from speckv.models.load import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

SETUPS = {"torch": ("bf16", "int8", "nf4"), "llamacpp": ("q4_k_m", "q8_0", "bf16", "f16")}
NEW_TOKENS = tuple(range(1, 17))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends", default="llamacpp,torch")
    ap.add_argument("--models", default=f"{DEFAULT_TARGET},{DEFAULT_DRAFT}")
    args = ap.parse_args()
    rows = []
    for backend in args.backends.split(","):
        for level in SETUPS[backend]:
            for name in args.models.split(","):
                t0 = time.perf_counter()
                loaded = load_model(name, level, "cpu", backend)
                new = NEW_TOKENS if name == DEFAULT_TARGET else (1, 2, 4, 8)
                ms = forward_ms(loaded.runner, args.context, new, args.repeats)
                row = {"backend": backend, "level": level, "model": name, "threads": loaded.runner.threads,
                       "weights_mib": round(loaded.runner.memory_bytes() / 2**20),
                       "ms": {str(n): round(v, 2) for n, v in ms.items()}}
                rows.append(row)
                print(f"{backend:9} {level:7} {name:30} " + " ".join(f"{n}:{v:.1f}" for n, v in ms.items())
                      + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
                del loaded
    write_json(args.out, {"context": args.context, "repeats": args.repeats, "machine": platform.processor() or platform.machine(),
                          "rows": rows})


if __name__ == "__main__":
    main()
