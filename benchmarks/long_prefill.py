"""Peak memory and time of reading a long prompt (issue 16, item 1): the bf16 target prefills 2K,
4K, 8K and 16K tokens of a long source file of an installed package (transformers'
modeling_utils.py), in chunks of 1024 tokens (speckv's default) and in one forward. Each
measurement runs in a fresh process; the high-water mark is reset after loading (Linux
clear_refs), so the peak is the prefill's. Run alone:

    .venv/bin/python benchmarks/long_prefill.py --out benchmarks/results/long_prefill.json
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

LENGTHS = (2048, 4096, 8192, 16384)


def child(length: int, chunk: int, level: str) -> dict:
    import torch
    import transformers

    from speckv.backends import hf
    from speckv.measure.memory import peak_gib, reset_peak, status_gib
    from speckv.models.load import load_model
    from speckv.models.registry import DEFAULT_TARGET

    hf.PREFILL_CHUNK = chunk
    model = load_model(DEFAULT_TARGET, level, "cpu", "torch")
    text = (Path(transformers.__file__).parent / "modeling_utils.py").read_text()
    ids = model.tokenizer(text)["input_ids"][:length]
    gc.collect()
    loaded = status_gib("VmRSS")
    reset_peak()  # loading's peak is not prefill's
    seq = model.runner.sequence()
    t0 = time.perf_counter()
    with torch.inference_mode():
        seq.forward(ids, 1, model.runner.vocab)
    return {"tokens": len(ids), "chunk": chunk, "level": level, "prefill_s": round(time.perf_counter() - t0, 2),
            "rss_before_gib": round(loaded, 2), "peak_rss_gib": round(peak_gib(), 2),
            "peak_over_weights_gib": round(peak_gib() - loaded, 2),
            "load_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--level", default="bf16")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.level)))
        return
    rows = []
    for length in map(int, args.lengths.split(",")):
        for chunk in (1024, 1 << 20):  # chunked, and one forward
            out = subprocess.run([sys.executable, __file__, "--level", args.level, "--child", str(length), str(chunk)],
                                 capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {
                "tokens": length, "chunk": chunk, "error": out.stderr.strip().splitlines()[-1:]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        from speckv.files import write_json

        write_json(args.out, {"rows": rows, "note": "peak RSS of the whole process (weights included), 2 CPU cores"})


if __name__ == "__main__":
    main()
