"""Run several decoding methods on the same prompt ids, interleaved, and summarize tokens/s.

Invariant: every method sees the same prompt ids back to back (the order rotated per prompt, so
machine drift between methods averages out), and tokens/s is total tokens over total seconds.

Methods: any controller spec (run through our engine), `hf-assisted[:N]`, transformers'
own assisted generation, `hf-lookup[:N]`, transformers' prompt lookup (N tokens, default 10), and
on the llama.cpp backend `llamacpp-server` / `llamacpp-spec[:N]`, llama-server's own target alone
and speculative decoding as real processes (bench/llama_server.py).
transformers reads its assisted-generation settings from the *draft's* generation_config, so we
set them there: `hf-assisted` = its defaults (20 tokens, constant
schedule, confidence threshold 0.4, fixed unless scikit-learn is installed), `hf-assisted:N` =
N tokens, constant schedule, confidence stopping off (the same gamma as our fixed:N).
transformers' methods run with transformers' own sdpa attention (our runner's short-query path,
backends/attention.py, is switched off for them): they are timed as their library ships them.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from speckv.api import Decoder
from speckv.backends.attention import stock
from speckv.control.spec import ControllerSpec
from speckv.data.prompts import Prompt
from speckv.errors import SpeckvError


@dataclass
class Row:
    method: str
    prompt_id: str
    new_tokens: int
    wall_s: float
    mean_accepted: float | None  # accepted draft tokens per step (None: not observable for hf-assisted)
    overhead_frac: float | None  # wall time outside model forwards and controller calls (None for hf-assisted)
    token_ids: list[int]
    task: str = ""
    decode_s: float | None = None  # seconds after the target read the prompt (None: not observable)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s


def check_method(method: str | ControllerSpec) -> ControllerSpec:
    """Parse a method spec before any model loads: a live controller, or hf-assisted[:N]."""
    return ControllerSpec.parse(method, allow_external=True)


def hf_settings(method: str | ControllerSpec) -> dict:
    """The generate() settings of a transformers method, pinned (results record them)."""
    spec = check_method(method)
    if spec.name == "hf-lookup":  # as transformers' docs show it: 10 tokens, n-grams up to 2 (its default)
        return {"prompt_lookup_num_tokens": spec.gamma or 10, "max_matching_ngram_size": 2}
    if spec.gamma is None:
        return {"num_assistant_tokens": 20, "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.4}
    return {"num_assistant_tokens": spec.gamma, "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}


def _hf_generate(decoder: Decoder, method: ControllerSpec, ids: list[int], max_new_tokens: int) -> tuple[list[int], float]:
    """transformers' own loop: assisted generation (hf-assisted) or prompt lookup (hf-lookup)."""
    target = decoder.target.module
    if method.name == "hf-lookup":
        extra = hf_settings(method)
    else:  # transformers reads assisted generation's settings from the draft's generation_config
        if decoder.draft is None:
            raise SpeckvError("hf-assisted needs a draft model")
        draft = decoder.draft.module
        for key, value in hf_settings(method).items():
            setattr(draft.generation_config, key, value)
        extra = {"assistant_model": draft}
    input_ids = torch.tensor([ids], device=target.device)
    t0 = time.perf_counter()
    # transformers' methods run as transformers ships them: with its own sdpa, not our short-query path
    with torch.inference_mode(), stock(target), stock(extra["assistant_model"]) if "assistant_model" in extra else nullcontext():
        out = target.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=max_new_tokens,
            pad_token_id=decoder.tokenizer.pad_token_id, **extra,
        )
    return out[0, len(ids):].tolist(), time.perf_counter() - t0


def run_method(decoder: Decoder, method: str, prompt_id: str, ids: list[int], max_new_tokens: int, task: str = "",
               peers=None) -> Row:
    spec = check_method(method)
    if spec.name.startswith("llamacpp-"):
        if peers is None:
            raise SpeckvError(f"{method} runs through run_side_by_side (it starts llama-server)")
        tokens, wall, decode = peers.run(spec, ids, max_new_tokens)
        return Row(method, prompt_id, len(tokens), wall, None, None, tokens, task, decode)
    if spec.external:
        tokens, wall = _hf_generate(decoder, spec, ids, max_new_tokens)
        return Row(method, prompt_id, len(tokens), wall, None, None, tokens, task)
    result = decoder.generate(ids, controller=spec, max_new_tokens=max_new_tokens)
    s = result.stats
    return Row(method, prompt_id, s.new_tokens, s.wall_s, s.mean_accepted, s.overhead_frac, result.token_ids, task,
               s.decode_s)


def run_side_by_side(decoder: Decoder, methods: list[str], prompts: list[tuple[str, Prompt]], max_new_tokens: int,
                     advance=None) -> list[Row]:
    """Every method on every (task, prompt), methods interleaved per prompt in a rotating order."""
    from speckv.bench.llama_server import Peers

    rows = []
    peers = Peers(decoder)
    try:
        for i, (task, prompt) in enumerate(prompts):
            ids = decoder.encode(prompt.text)
            for method in methods[i % len(methods):] + methods[: i % len(methods)]:
                rows.append(run_method(decoder, method, prompt.id, ids, max_new_tokens, task, peers))
                if advance:
                    advance()
    finally:
        peers.close()
    return rows


def per_task(rows: list[Row], methods: list[str]) -> dict[str, dict[str, float]]:
    """Aggregate tokens/s per task and method (tasks in first-seen order)."""
    out: dict[str, dict[str, float]] = {}
    for task in dict.fromkeys(r.task for r in rows):
        out[task] = {}
        for m in methods:
            mine = [r for r in rows if r.task == task and r.method == m]
            out[task][m] = round(sum(r.new_tokens for r in mine) / sum(r.wall_s for r in mine), 2) if mine else float("nan")
    return out


def summarize(rows: list[Row], methods: list[str], baseline: str) -> list[dict]:
    """Aggregate tokens/s (total tokens / total time) per method and the ratio to the baseline."""
    totals = {m: (sum(r.new_tokens for r in rows if r.method == m), sum(r.wall_s for r in rows if r.method == m)) for m in methods}
    base_tps = totals[baseline][0] / totals[baseline][1]
    reference = {r.prompt_id: r.token_ids for r in rows if r.method == baseline}
    out = []
    for m in methods:
        tokens, wall = totals[m]
        mine = [r for r in rows if r.method == m and r.prompt_id in reference]
        acc = [r.mean_accepted for r in rows if r.method == m and r.mean_accepted is not None]
        overhead = [r.overhead_frac for r in rows if r.method == m and r.overhead_frac is not None]
        decode = [r.decode_s for r in rows if r.method == m]
        out.append({
            "method": m, "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2),
            # after the target read the prompt, as llama.cpp prints speed (None where a method hides it)
            "decode_tokens_per_s": round(tokens / sum(decode), 2) if decode and None not in decode else None,
            "mean_accepted": round(sum(acc) / len(acc), 2) if acc else None,
            "speedup": round(tokens / wall / base_tps, 3),
            "overhead_frac": round(sum(overhead) / len(overhead), 4) if overhead else None,
            # share of prompts whose output equals the baseline's token for token (exact only in float32)
            "same_output": round(sum(r.token_ids == reference[r.prompt_id] for r in mine) / len(mine), 3) if mine else None,
        })
    return out


def bench_payload(decoder: Decoder, rows: list[Row], methods: list[str], config: dict) -> dict:
    """What `speckv bench --out` writes: the summary, per-task tokens/s, every row and the setup."""
    from transformers.utils import is_sklearn_available

    return {"summary": summarize(rows, methods, methods[0]), "per_task": per_task(rows, methods),
            "rows": [r.__dict__ for r in rows],
            "config": {**config, "draft": decoder.setup.draft, "drafter": str(decoder.drafter), "target": decoder.target.name,
                       "target_compression": decoder.target.compression, "draft_compression": decoder.setup.draft_compression,
                       "methods": methods, "threads": decoder.target.runner.threads, "backend": decoder.target.backend,
                       "torch": torch.__version__,
                       # with scikit-learn present, assisted generation adapts its confidence threshold
                       "hf_assisted_sklearn": is_sklearn_available()}}
