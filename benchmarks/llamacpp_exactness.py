"""At which llama.cpp precision does verifying k tokens in one forward give the same argmax as k
one-token forwards? There, speculative greedy output is token-identical to llama.cpp's own greedy
decoding; elsewhere batched and one-token kernels round differently and we report agreement.
f32 runs with an f32 KV cache and no flash attention (the backend's exact mode); the other levels
with llama.cpp's defaults (f16 cache, flash attention when it chooses), as users run them.

Per model and level: greedy-decode each prompt one token at a time (llama.cpp's own greedy
decoding), then re-score the same text with k-token forwards (k = 2, 4, 8, 16) and count the
positions whose argmax differs, and the largest logit difference. Then whole generations:
the share of prompts where speckv's fixed:4 and `auto` (hybrid) output equals the target alone's.

    .venv/bin/python benchmarks/llamacpp_exactness.py --out benchmarks/results/llamacpp_exactness.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import speckv
from speckv.data.tasks import select
from speckv.files import write_json
from speckv.models.load import load_model

LEVELS = ("f32", "f16", "bf16", "q8_0", "q4_k_m")


def greedy(runner, prompt: list[int], n: int, vocab: int) -> list[int]:
    seq = runner.sequence()
    try:
        out = []
        row = seq.forward(prompt, 1, vocab)[0]
        for _ in range(n):
            out.append(int(row.argmax()))
            row = seq.forward([out[-1]], 1, vocab)[0]
        return out
    finally:
        seq.close()


def rescore(runner, prompt: list[int], output: list[int], k: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting each output token, computed k tokens per forward, and one token per forward."""
    rows = {}
    for size in (k, 1):
        seq = runner.sequence()
        try:
            seq.forward(prompt[:-1], 1, vocab)
            feed = [prompt[-1]] + output[:-1]
            rows[size] = torch.cat([seq.forward(feed[i:i + size], len(feed[i:i + size]), vocab)
                                    for i in range(0, len(feed), size)])
        finally:
            seq.close()
    return rows[k], rows[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=2, help="per task (code, chat, summarization, edit)")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    chosen = [p for t in ("code", "chat", "summarization", "edit") for p in select(t, args.prompts, 7)]
    rows = []
    for name in args.models.split(","):
        for level in LEVELS:
            t0 = time.perf_counter()
            dec = None
            if name.startswith("qwen"):  # with the draft model at the same level, for whole generations
                dec = speckv.load(name, args.draft, compression=level, draft_compression=level, backend="llamacpp")
            loaded = dec.target if dec else load_model(name, level, "cpu", "llamacpp")
            runner, tok = loaded.runner, loaded.tokenizer
            vocab = min(runner.vocab, len(tok))
            row = {"model": name, "level": level, "positions": 0, "argmax_differs": {}, "max_abs_diff": {}}
            for p in chosen:
                ids = tok.apply_chat_template([{"role": "user", "content": p.text}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"]
                out = greedy(runner, ids, args.tokens, vocab)
                row["positions"] += len(out)
                for k in (2, 4, 8, 16):
                    batched, single = rescore(runner, ids, out, k, vocab)
                    row["argmax_differs"][k] = row["argmax_differs"].get(k, 0) + int((batched.argmax(-1) != single.argmax(-1)).sum())
                    row["max_abs_diff"][k] = max(row["max_abs_diff"].get(k, 0.0), float((batched - single).abs().max()))
            if dec:
                same = {"fixed:4": 0, "auto": 0}
                for p in chosen:
                    alone = dec.generate(p.text, controller="autoregressive", max_new_tokens=args.tokens).token_ids
                    for method in same:
                        same[method] += dec.generate(p.text, controller=method, max_new_tokens=args.tokens).token_ids == alone
                row["same_output"] = {m: f"{v}/{len(chosen)}" for m, v in same.items()}
            rows.append(row)
            print(f"{name:30} {level:7} argmax differs {row['argmax_differs']} of {row['positions']}  "
                  f"max|d| {({k: round(v, 4) for k, v in row['max_abs_diff'].items()})} {row.get('same_output', '')} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            del loaded, runner, dec
    write_json(args.out, {"tokens": args.tokens, "prompts": [p.id for p in chosen], "rows": rows})


if __name__ == "__main__":
    main()
