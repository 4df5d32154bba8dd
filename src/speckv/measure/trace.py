"""Traces: everything greedy speculation can depend on, collected once per (prompt, target).

Under greedy decoding the output is fixed: the target's own greedy continuation. One
teacher-forced draft pass over prompt + output gives, at every output position, the draft's
top-1 token and its signals, and so whether a draft made there would be accepted. After a
mismatch the live draft keeps going on its *own* wrong token; those tokens are never accepted
but a signal-driven policy's stopping point (and so its cost) depends on them, so each mismatch
also gets a free-running continuation of `depth` tokens. With both, replay (measure/replay.py)
reproduces any greedy controller's steps exactly, without running a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import DynamicCache

from speckv.control.fixed import Autoregressive
from speckv.engine.decode import Engine
from speckv.drafting.chain import batch_signals
from speckv.engine.kv import cached_logits, crop_to
from speckv.errors import SpeckvError
from speckv.files import atomic_write
from speckv.records import TokenSignals

TRACE_VERSION = 1


@dataclass
class Branch:
    """The draft's free-running continuation after its wrong token at one position."""

    tokens: list[int] = field(default_factory=list)
    signals: list[TokenSignals] = field(default_factory=list)


@dataclass
class Trace:
    prompt_ids: list[int]
    output_ids: list[int]  # the target's greedy output: ends at a stop token or at max_new_tokens
    draft_tokens: list[int]  # the draft's top-1 at each output position, given prompt + output[:i]
    signals: list[TokenSignals]
    branches: dict[int, Branch]  # mismatch position -> continuation after draft_tokens[i]
    max_new_tokens: int
    depth: int  # continuation length: supports budgets up to depth + 1
    stop_ids: frozenset[int] = frozenset()  # drafting and generation end at these
    meta: dict = field(default_factory=dict)  # prompt id, task, models, compression, device

    @property
    def matches(self) -> list[bool]:
        return [d == t for d, t in zip(self.draft_tokens, self.output_ids)]


@torch.inference_mode()
def collect_trace(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    stop_ids: frozenset[int] = frozenset(),
    depth: int = 15,
    meta: dict | None = None,
) -> Trace:
    """Generate the target's greedy output, then run the draft over it (teacher-forced + branches)."""
    engine = Engine(target)  # the target alone: its greedy output
    output = [t for event in engine.run(prompt_ids, Autoregressive(), max_new_tokens=max_new_tokens, stop_ids=stop_ids)
              for t in event.tokens]
    vocab = engine.vocab
    ids = list(prompt_ids) + output
    n, start = len(output), len(prompt_ids)

    # Teacher-forced pass, incrementally so every branch can reuse the cached prefix: the cache
    # holds ids[:start + i - 1]; feeding up to position start + i - 1 yields the row predicting output[i].
    cache = DynamicCache(config=draft.config)
    if start > 1:
        cached_logits(draft, cache, ids[: start - 1], 1, vocab)
    rows = cached_logits(draft, cache, ids[start - 1 : start + n - 1], n, vocab)
    draft_tokens = rows.argmax(-1).tolist()
    signals = batch_signals(rows)

    branches: dict[int, Branch] = {}
    for i, (d, t) in enumerate(zip(draft_tokens, output)):
        if d == t:
            continue
        branch = Branch()
        branches[i] = branch
        # The cache must hold exactly prompt + output[:i]: crop back, or catch up after a branch.
        have = cache.get_seq_length()
        if have > start + i:
            crop_to(cache, start + i)
        elif have < start + i:
            cached_logits(draft, cache, ids[have : start + i], 1, vocab)
        token = d
        while len(branch.tokens) < depth and token not in stop_ids:
            row = cached_logits(draft, cache, [token], 1, vocab)
            token = int(row[0].argmax())
            branch.tokens.append(token)
            branch.signals.append(batch_signals(row)[0])
        crop_to(cache, start + i)
    return Trace(list(prompt_ids), output, draft_tokens, signals, branches, max_new_tokens, depth, frozenset(stop_ids),
                 dict(meta or {}))


def _signal_columns(signals: list[TokenSignals], prefix: str = "") -> dict:
    return {
        f"{prefix}entropy": [s.entropy for s in signals],
        f"{prefix}top1": [s.top1 for s in signals],
        f"{prefix}margin": [s.margin for s in signals],
    }


def save_trace(trace: Trace, path: Path) -> None:
    """One Parquet file per trace: a row per output position; the rest in the schema metadata."""
    empty = Branch()
    branches = [trace.branches.get(i, empty) for i in range(len(trace.output_ids))]
    table = pa.table({
        "position": list(range(len(trace.output_ids))),
        "target_token": trace.output_ids,
        "draft_token": trace.draft_tokens,
        **_signal_columns(trace.signals),
        "match": trace.matches,
        "branch_tokens": [b.tokens for b in branches],
        "branch_entropy": [[s.entropy for s in b.signals] for b in branches],
        "branch_top1": [[s.top1 for s in b.signals] for b in branches],
        "branch_margin": [[s.margin for s in b.signals] for b in branches],
    })
    header = {"version": TRACE_VERSION, "prompt_ids": trace.prompt_ids, "max_new_tokens": trace.max_new_tokens,
              "depth": trace.depth, "stop_ids": sorted(trace.stop_ids), "mismatches": sorted(trace.branches), "meta": trace.meta}
    table = table.replace_schema_metadata({"speckv.trace": json.dumps(header)})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def load_trace(path: Path) -> Trace:
    try:
        table = pq.read_table(path)
        header = json.loads(table.schema.metadata[b"speckv.trace"])
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise SpeckvError(f"{path}: not a readable speckv trace ({type(exc).__name__})") from None
    if header.get("version") != TRACE_VERSION:
        raise SpeckvError(f"{path}: trace version {header.get('version')} (this speckv reads {TRACE_VERSION})")
    df = table.to_pandas()

    def sig(e, t, m):
        return [TokenSignals(float(a), float(b), float(c)) for a, b, c in zip(e, t, m)]

    branches = {}
    for i in header["mismatches"]:
        row = df.iloc[i]
        branches[i] = Branch([int(t) for t in row.branch_tokens],
                             sig(row.branch_entropy, row.branch_top1, row.branch_margin))
    return Trace(
        header["prompt_ids"], df.target_token.astype(int).tolist(), df.draft_token.astype(int).tolist(),
        sig(df.entropy, df.top1, df.margin), branches, header["max_new_tokens"], header["depth"],
        frozenset(header["stop_ids"]), header["meta"],
    )


def load_traces(directory: Path) -> list[Trace]:
    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise SpeckvError(f"{directory}: no traces (*.parquet); collect them with `speckv trace`")
    return [load_trace(f) for f in files]


def position_table(traces: list[Trace]) -> pd.DataFrame:
    """On-path positions of many traces: the draft's signals and whether the target agreed."""
    frames = []
    for tr in traces:
        df = pd.DataFrame(_signal_columns(tr.signals))
        df["match"] = tr.matches
        df["position"] = range(len(df))
        for key in ("prompt_id", "task", "compression"):
            df[key] = tr.meta.get(key)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
