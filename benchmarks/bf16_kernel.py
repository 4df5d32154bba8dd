"""Our bf16 kernel (models/cpu_linear.py) against torch's bf16 layers: ms per forward of the target and
the draft at context 300, 1-17 new tokens (a plain step to a 16-token verification), both ways in
one process, interleaved. Run alone on a quiet machine:

    .venv/bin/python benchmarks/bf16_kernel.py --out benchmarks/results/bf16_kernel.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from speckv.files import write_json
from speckv.measure.latency import forward_ms
from speckv.models import cpu_kernels, cpu_linear
from speckv.models.load import load_model
from speckv.models.registry import DEFAULT_DRAFT, DEFAULT_TARGET

TOKENS = (1, 2, 5, 9, 17)


def torch_layers(model: torch.nn.Module) -> None:
    """Back to torch's forward (the kernel changes only the class of each layer)."""
    for m in model.modules():
        if isinstance(m, cpu_linear.CpuLinear):
            m.__class__ = torch.nn.Linear


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not cpu_kernels.linear_pays(torch.bfloat16):
        raise SystemExit("speckv: error: the kernel does not pay on this CPU (or cannot be built): nothing to compare")
    result = {"cpu": platform.processor() or platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "context": 300, "ms": {}}
    for name in (DEFAULT_TARGET, DEFAULT_DRAFT):
        ours = load_model(name, "bf16", "cpu")
        theirs = load_model(name, "bf16", "cpu")
        torch_layers(theirs.model)
        runs = {"kernel": [], "torch": []}
        for _ in range(args.rounds):  # interleaved: drift shows as round-to-round differences
            for label, m in (("kernel", ours), ("torch", theirs)):
                runs[label].append(forward_ms(m.runner, context=300, new_tokens=TOKENS, repeats=2))
        result["ms"][name] = {label: {n: round(min(r[n] for r in rs), 1) for n in TOKENS} for label, rs in runs.items()}
        result["ms"][name]["rounds"] = {label: [{n: round(r[n], 1) for n in TOKENS} for r in rs] for label, rs in runs.items()}
        print(name, json.dumps({k: v for k, v in result["ms"][name].items() if k != "rounds"}), flush=True)
        del ours, theirs
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
