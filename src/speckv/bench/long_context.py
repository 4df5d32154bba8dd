"""Long inputs side by side (`speckv eval --long-context`): on the same long documents, the target
alone and speculative decoding whose draft attends to the full prompt, a sliding window,
retrieval (SpecExtend) or `auto`, live, one document at a time, every method in turn.

Each document is read once per model: the runners remember the last long prompt (backends/hf.py,
keep_prompts), so every method after the first copies the target's cache, and those whose draft
reads the whole prompt copy the full draft's. Prefill is therefore measured where it is computed
(the target's in the `alone` run, the full draft's in `full`'s, a window's in its own run) and
every method is charged its own (`charge`): end-to-end time = target prefill + its draft prefill +
its decode. Methods whose draft reads a window run last: that short prompt replaces the remembered
one. Decode tokens/s excludes prefill.

A unit (one document at one length, all methods) is written atomically when done, so an
interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from speckv.api import Decoder
from speckv.data.long_docs import long_documents
from speckv.drafting.context import LongContext
from speckv.errors import SpeckvError
from speckv.files import ensure_dir, write_json
from speckv.measure.memory import peak_gib, reset_peak

#: the order methods run in on each document within their group (see LongConfig.methods)
ORDER = ("alone", "full", "retrieval", "auto", "window")


@dataclass(frozen=True)
class LongConfig:
    lengths: tuple[int, ...]
    docs: int
    modes: tuple[str, ...]  # long-context specs compared (plus the target alone)
    controller: str
    max_new_tokens: int
    seed: int
    target: str
    draft: str
    compression: str
    drafter: str = "model"

    def methods(self) -> list[str]:
        """alone first, then those that read the whole prompt (full first), then those that read a
        window (each of those replaces the remembered draft prompt)."""
        def key(method: str) -> tuple[int, int]:
            if method == "alone":
                return (0, 0)
            spec = LongContext.parse(method)
            return (2 if spec.windowed else 1, ORDER.index(spec.mode))

        return sorted(dict.fromkeys(["alone", *self.modes]), key=key)


def check_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    """Each mode a valid --long-context spec (parsed here, before any model loads)."""
    if not modes:
        raise SpeckvError("--long-context needs at least one mode to compare (full, window, retrieval, auto)")
    for mode in modes:
        LongContext.parse(mode)
    return modes


def decoders_for(dec: Decoder, config: LongConfig) -> dict[str, Decoder]:
    """One Decoder per method over the same loaded models, whose runners remember the last long
    prompt (so a document is read once per model)."""
    for model in (dec.target, dec.draft):
        if model is not None and hasattr(model.runner, "keep_prompts"):
            model.runner.keep_prompts = True
    out = {}
    for method in config.methods():
        context = "full" if method == "alone" else method
        out[method] = Decoder(dec.target, dec.draft, config.controller, config.drafter, long_context=context)
    return out


def unit_path(out: Path, length: int, doc: int) -> Path:
    return out / "long" / f"{length}-{doc}.json"


def run_unit(decoders: dict[str, Decoder], config: LongConfig, length: int, index: int, doc, out: Path) -> list[dict]:
    """Every method on one document; raw rows (see `charge` for what is derived), written to its
    unit file."""
    alone = decoders["alone"]
    ids = alone.prepare(doc.text)
    reset_peak()
    rows = []
    for method in config.methods():
        dec = decoders[method]
        controller = "autoregressive" if method == "alone" else config.controller
        result = dec.generate(ids, max_new_tokens=config.max_new_tokens, controller=controller)
        steps = result.steps
        drafting = [s for s in steps if s.drafted]
        spec = dec.long_context.at(len(ids))  # what this document's length made of the method's spec
        mode = "alone" if method == "alone" else spec.mode
        rows.append({
            "length": length, "doc": index, "prompt_id": doc.id, "kind": doc.category, "prompt_tokens": len(ids),
            "method": method, "mode": mode, "new_tokens": len(result.token_ids), "tokens": result.token_ids,
            # whether the draft read the whole prompt (else only a window): whose prefill it is charged
            "reads_prompt": mode != "alone" and not spec.windowed,
            "wall_s": result.stats.wall_s, "prefill_s": result.stats.prefill_ms / 1000,
            "decode_s": result.stats.wall_s - result.stats.prefill_ms / 1000, "steps": len(steps),
            "drafting_steps": len(drafting), "accepted": sum(s.accepted for s in drafting),
            "drafted": sum(s.drafted for s in steps),
            "draft_ms": sum(s.draft_ms for s in steps), "verify_ms": sum(s.verify_ms for s in steps),
        })
    peak = peak_gib()
    for row in rows:
        row["peak_rss_gib"] = peak  # all methods on this document
    write_json(unit_path(out, length, index), rows)
    return rows


def charge(frame):
    """Each method's own prompt reading: the target's prefill is the `alone` run's (later runs copy
    its cache); a draft that reads the whole prompt is charged the `full` run's draft prefill (the
    first to compute it; later ones copy it), one that reads a window its own. End-to-end time =
    target prefill + draft prefill (if it drafted) + decode."""
    frame = frame.copy()
    if "reads_prompt" not in frame:
        frame["reads_prompt"] = frame["mode"].isin(["full", "retrieval"])
    by_doc = frame.set_index(["length", "doc", "method"])["prefill_s"]
    target = frame.apply(lambda r: by_doc[(r.length, r.doc, "alone")], axis=1)
    full = frame.apply(lambda r: by_doc.get((r.length, r.doc, "full"), r.prefill_s), axis=1)
    drafted = (frame["method"] != "alone") & (frame["drafted"] > 0)
    own = frame["prefill_s"].where(~frame["reads_prompt"], full)
    frame["target_prefill_s"] = target
    frame["draft_prefill_s"] = own.where(drafted, 0.0)
    frame["end_to_end_s"] = frame["target_prefill_s"] + frame["draft_prefill_s"] + frame["decode_s"]
    return frame


def documents(config: LongConfig, tokenizer) -> dict[int, list]:
    return {length: long_documents(tokenizer, length, config.docs, config.seed) for length in config.lengths}


def evaluate_long(decoders: dict[str, Decoder], config: LongConfig, out: Path, progress=None) -> list[dict]:
    """Run every unit not yet on disk; all rows (old and new)."""
    ensure_dir(out / "long")
    docs = documents(config, decoders["alone"].tokenizer)
    rows = []
    for length in config.lengths:
        for index, doc in enumerate(docs[length]):
            path = unit_path(out, length, index)
            if path.is_file():
                rows += json.loads(path.read_text())
            else:
                rows += run_unit(decoders, config, length, index, doc, out)
            if progress is not None:
                progress.advance()
    return rows


def summary(rows: list[dict], methods: list[str]) -> list[dict]:
    """Per length and method: decode and end-to-end tokens/s, mean accepted, draft ms per drafted
    token, peak memory; ratios over `full` and `alone` with paired bootstrap CIs over documents."""
    import pandas as pd

    from speckv.measure.stats import paired_ci

    frame = charge(pd.DataFrame(rows))
    table = []
    for length, part in frame.groupby("length"):
        part = part.assign(controller=part["method"], prompt_id=part["doc"])
        for method in methods:
            mine = part[part.method == method]
            if mine.empty:
                continue
            line = {"length": int(length), "method": method, "docs": len(mine),
                    "decode_tps": mine.new_tokens.sum() / mine.decode_s.sum(),
                    "end_to_end_tps": mine.new_tokens.sum() / mine.end_to_end_s.sum(),
                    "mean_accepted": mine.accepted.sum() / max(1, mine.drafting_steps.sum()),
                    "draft_ms_per_token": mine.draft_ms.sum() / max(1, mine.drafted.sum()),
                    "draft_prefill_s": mine.draft_prefill_s.mean(), "target_prefill_s": mine.target_prefill_s.mean(),
                    "peak_rss_gib": part.peak_rss_gib.max(),
                    "same_as_alone": _agreement(part, method)}
            for base in ("alone", "full"):
                if base != method and (part.method == base).any():
                    ci = paired_ci(part, method, base, "new_tokens", "decode_s")
                    line[f"decode_vs_{base}"] = [round(ci.ratio, 3), round(ci.low, 3), round(ci.high, 3)]
                    ci = paired_ci(part, method, base, "new_tokens", "end_to_end_s")
                    line[f"end_to_end_vs_{base}"] = [round(ci.ratio, 3), round(ci.low, 3), round(ci.high, 3)]
            for base in ("window", "full"):
                if base != method and method != "alone" and (part.method == base).any():
                    ci = paired_ci(part, method, base, "accepted", "drafting_steps")
                    line[f"accepted_vs_{base}"] = [round(ci.ratio, 3), round(ci.low, 3), round(ci.high, 3)]
                    if part[part.method == base].drafted.sum() and mine.drafted.sum():
                        ci = paired_ci(part, method, base, "draft_ms", "drafted")
                        line[f"draft_ms_vs_{base}"] = [round(ci.ratio, 3), round(ci.low, 3), round(ci.high, 3)]
            table.append({k: round(v, 3) if isinstance(v, float) else v for k, v in line.items()})
    return table


def _agreement(part, method: str) -> float:
    """Share of documents where the method's output equals the target alone's (bf16 rounds
    batched and single-token forwards differently, so this is reported, not required)."""
    alone = {r.doc: list(r.tokens) for r in part[part.method == "alone"].itertuples()}
    mine = part[part.method == method]
    return round(sum(list(r.tokens) == alone.get(r.doc) for r in mine.itertuples()) / max(1, len(mine)), 3)
