"""bitsandbytes vs torchao for the int8 / NF4 target on this machine, side by side in one run.

For each backend: weight memory, median ms per cached forward (1 and 8 new tokens after a
300-token context) and greedy agreement with the bf16 target on a few Spec-Bench prompts.
torchao is not a speckv dependency; without it its rows say so. Run alone on a quiet machine:

    .venv/bin/python benchmarks/quant_backends.py --out benchmarks/results/quant_backends.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from importlib import metadata
from pathlib import Path

import torch

from speckv.api import Decoder
from speckv.data.prompts import spec_bench
from speckv.measure.latency import forward_ms
from speckv.models.load import load_model
from speckv.models.registry import DEFAULT_TARGET


def _torchao(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """Quantize a bf16 model in place with torchao (int8 / int4 weight-only, or NF4 weights)."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    if kind == "nf4":
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4, to_nf4

        class NF4Linear(torch.nn.Module):
            def __init__(self, linear: torch.nn.Linear):
                super().__init__()
                self.weight = torch.nn.Parameter(to_nf4(linear.weight.data), requires_grad=False)
                self.bias = linear.bias

            def forward(self, x):
                out = linear_nf4(x, self.weight)
                return out if self.bias is None else out + self.bias

        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, child in list(parent.named_children()):
                    if isinstance(child, torch.nn.Linear):
                        setattr(parent, name, NF4Linear(child))
        return model
    quantize_(model, Int8WeightOnlyConfig() if kind == "int8" else Int4WeightOnlyConfig())
    return model


def _weight_mb(model: torch.nn.Module) -> float:
    """Serialized state size: counts quantized tensor subclasses and their scales honestly
    (get_memory_footprint reports torchao's tensors at their logical dtype)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quant_backends.json"))
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--target", default=DEFAULT_TARGET)
    args = ap.parse_args()

    reference = load_model(args.target, "bf16")
    dec = Decoder(reference, None)
    prompts = [dec.encode(p.text) for p in spec_bench(["coding", "math_reasoning", "writing"], 1)[: args.prompts]]
    greedy = {i: dec.generate(ids, controller="autoregressive", max_new_tokens=args.max_new_tokens).token_ids
              for i, ids in enumerate(prompts)}

    rows = []
    for backend, level in [("bf16", "bf16"), ("bitsandbytes", "int8"), ("bitsandbytes", "nf4"),
                           ("torchao", "int8"), ("torchao", "int4"), ("torchao", "nf4")]:
        row = {"backend": backend, "level": level}
        try:
            t0 = time.perf_counter()
            if backend == "torchao":
                loaded = load_model(args.target, "bf16")
                _torchao(loaded.model, level)
            else:
                loaded = load_model(args.target, level)
            row["load_s"] = round(time.perf_counter() - t0, 1)
            row["weights_mb"] = round(_weight_mb(loaded.model))
            row["ms_per_forward"] = {str(k): round(v, 1) for k, v in forward_ms(loaded.model).items()}
            d = Decoder(loaded, None)
            same = [d.generate(ids, controller="autoregressive", max_new_tokens=args.max_new_tokens).token_ids == greedy[i]
                    for i, ids in enumerate(prompts)]
            row["greedy_identical_to_bf16"] = f"{sum(same)}/{len(same)}"
            del d, loaded
        except Exception as exc:  # a backend that cannot run here is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    versions = {}
    for package in ("bitsandbytes", "torchao"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    result = {"target": args.target, "threads": torch.get_num_threads(), "torch": torch.__version__, **versions,
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
