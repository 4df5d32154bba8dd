"""The profiling dataset: every (compression, prompt, gamma) run, step by step, as Parquet.

Step records are a superset of SpecKV's phase2_step_results.csv; run records match its
phase2_experiment_results.csv. One file per (compression, prompt) unit, written atomically,
so an interrupted profile loses at most the prompt in progress and resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from speckv.errors import SpeckvError

SPECKV_STEP_COLUMNS = [
    "compression", "gamma", "task", "step", "accepted", "acceptance_rate", "tokens_produced",
    "mean_draft_entropy", "mean_draft_confidence", "max_draft_entropy", "min_draft_confidence",
]
SPECKV_RUN_COLUMNS = ["compression", "gamma", "task", "prompt_id", "tokens_per_s", "wall_s", "new_tokens", "mean_accepted"]
PAIR_KEYS = ("target", "draft", "draft_compression", "max_new_tokens")


@dataclass(frozen=True)
class ProfileConfig:
    tasks: tuple[str, ...] = ("code", "math", "chat", "summarization")
    gammas: tuple[int, ...] = (2, 4, 6, 8)
    compressions: tuple[str, ...] = ("bf16", "int8", "nf4")
    draft_compression: str = "bf16"
    prompts_per_task: int = 10
    max_new_tokens: int = 128
    seed: int = 0
    target: str = "qwen2.5-coder-1.5b-instruct"
    draft: str = "qwen2.5-coder-0.5b-instruct"
    device: str = "auto"
    baseline: bool = True  # also run the target alone (gamma 0): when does speculation stop paying?


@dataclass
class Environment:
    """Where the numbers were measured; stamped on every record."""

    device: str
    threads: int
    torch: str
    transformers: str
    speckv: str
    machine: str = field(default_factory=platform.machine)

    @classmethod
    def current(cls, device: str) -> Environment:
        import torch
        import transformers

        import speckv

        return cls(device, torch.get_num_threads(), torch.__version__, transformers.__version__, speckv.__version__)


def step_rows(steps, *, meta: dict) -> list[dict]:
    rows = []
    for s in steps:
        ent = [t.entropy for t in s.signals]
        conf = [t.top1 for t in s.signals]
        rows.append({
            **meta, "step": s.step, "accepted": s.accepted,
            "acceptance_rate": s.accepted / s.drafted if s.drafted else float("nan"),
            "tokens_produced": s.emitted,
            "mean_draft_entropy": sum(ent) / len(ent) if ent else float("nan"),
            "mean_draft_confidence": sum(conf) / len(conf) if conf else float("nan"),
            "max_draft_entropy": max(ent, default=float("nan")),
            "min_draft_confidence": min(conf, default=float("nan")),
            "budget": s.budget, "drafted": s.drafted, "context_len": s.context_len,
            "draft_entropies": ent, "draft_confidences": conf, "draft_margins": [t.margin for t in s.signals],
            "draft_ms": s.draft_ms, "verify_ms": s.verify_ms, "control_ms": s.control_ms,
        })
    return rows


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Atomically: a reader (or a resumed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def unit_name(compression: str, prompt_id: str) -> str:
    return f"{compression}__{prompt_id.replace('/', '_')}.parquet"


def claim_dir(out: Path, name: str, config: dict, keys: tuple[str, ...], force: bool) -> None:
    """Refuse to mix records of a different setup into one directory (unless forced), then
    record this setup in out/name."""
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / name
    mine = json.loads(json.dumps({k: config[k] for k in keys}))  # tuples compare as lists
    if meta_path.is_file() and not force:
        stored = json.loads(meta_path.read_text())
        theirs = {k: stored.get(k) for k in keys}
        if theirs != mine:
            diff = ", ".join(f"{k}: {theirs[k]} != {mine[k]}" for k in keys if theirs[k] != mine[k])
            raise SpeckvError(f"{out} holds records of another setup ({diff}); use --force or another --out")
    tmp = meta_path.with_name(f".{name}.tmp")
    tmp.write_text(json.dumps(config, indent=1))
    os.replace(tmp, meta_path)


def run_profile(config: ProfileConfig, out: Path, force: bool = False, csv: bool = False, progress=None) -> int:
    """Profile every (compression, task prompt, gamma); returns the number of new units written."""
    from speckv.api import Decoder
    from speckv.control import make_controller
    from speckv.data.tasks import select
    from speckv.models.compress import Compression
    from speckv.models.load import load_model

    levels = [Compression.parse(c).level for c in config.compressions]
    for g in config.gammas:
        make_controller(f"fixed:{g}")
    prompts = [(task, p) for task in config.tasks for p in select(task, config.prompts_per_task, config.seed)]
    claim_dir(out, "profile.json", asdict(config), PAIR_KEYS, force)
    (out / "steps").mkdir(exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    todo = [(lvl, task, p) for lvl in levels for task, p in prompts if not (out / "runs" / unit_name(lvl, p.id)).is_file()]
    if progress:
        progress.start(len(levels) * len(prompts), len(levels) * len(prompts) - len(todo))
    draft = load_model(config.draft, config.draft_compression, config.device) if todo else None
    written = 0
    for level in levels:
        units = [(task, p) for lvl, task, p in todo if lvl == level]
        if not units:
            continue
        target = load_model(config.target, level, config.device)
        dec = Decoder(target, draft)
        env = Environment.current(str(target.model.device))
        methods = (["autoregressive"] if config.baseline else []) + [f"fixed:{g}" for g in config.gammas]
        for task, prompt in units:
            ids = dec.encode(prompt.text)
            step_frames, run_records = [], []
            for method in methods:
                result = dec.generate(ids, controller=method, max_new_tokens=config.max_new_tokens)
                gamma = 0 if method == "autoregressive" else int(method.split(":")[1])
                meta = {
                    "compression": level, "gamma": gamma, "task": task, "prompt_id": prompt.id,
                    "target": config.target, "draft": config.draft, "draft_compression": draft.compression,
                    "prompt_len": len(ids), **asdict(env),
                }
                step_frames += step_rows(result.steps, meta=meta)
                s = result.stats
                run_records.append({**meta, "tokens_per_s": s.tokens_per_s, "wall_s": s.wall_s, "new_tokens": s.new_tokens,
                                    "mean_accepted": s.mean_accepted, "steps": s.steps, "prefill_ms": s.prefill_ms,
                                    "finish_reason": result.finish_reason})
            name = unit_name(level, prompt.id)
            write_parquet(pd.DataFrame(step_frames), out / "steps" / name)
            write_parquet(pd.DataFrame(run_records), out / "runs" / name)  # runs/ last: it marks the unit done
            written += 1
            if progress:
                progress.advance()
        del dec, target
    if csv:
        export_csv(out)
    return written


def load_records(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(steps, runs) of a profile directory; unreadable files are a user error naming the file."""
    frames = {}
    for kind in ("steps", "runs"):
        files = sorted((out / kind).glob("*.parquet"))
        if not files:
            raise SpeckvError(f"{out / kind}: no records (run speckv profile --out {out} first)")
        parts = []
        for f in files:
            try:
                parts.append(pd.read_parquet(f))
            except Exception as exc:  # pyarrow raises several types for damaged files
                raise SpeckvError(f"{f}: unreadable records ({type(exc).__name__})") from None
        frames[kind] = pd.concat(parts, ignore_index=True)
    return frames["steps"], frames["runs"]


def export_csv(out: Path) -> None:
    steps, runs = load_records(out)
    for name, df in (("steps.csv", steps), ("runs.csv", runs)):
        tmp = out / f".{name}.tmp"
        df.to_csv(tmp, index=False)
        os.replace(tmp, out / name)
