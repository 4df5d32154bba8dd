"""The profiling dataset: every (compression, prompt, gamma) run, step by step, as Parquet.

Step records are a superset of SpecKV's phase2_step_results.csv; run records match its
phase2_experiment_results.csv. One file per (compression, prompt) unit, written atomically,
so an interrupted profile loses at most the prompt in progress and resumes where it stopped.
profile.json records the setup the directory is for; a resume may add units (compressions, tasks,
prompts) but never changes what a unit holds (gammas, baseline, tokens): each finished unit's records
are checked against the request. One process writes a directory at a time (a lock file).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from speckv.errors import SpeckvError
from speckv.files import atomic_write, dir_lock, ensure_dir, read_parquet, write_json
from speckv.files import write_parquet  # every unit file: temp + rename, temp removed on failure

SPECKV_STEP_COLUMNS = [
    "compression", "gamma", "task", "step", "accepted", "acceptance_rate", "tokens_produced",
    "mean_draft_entropy", "mean_draft_confidence", "max_draft_entropy", "min_draft_confidence",
]
SPECKV_RUN_COLUMNS = ["compression", "gamma", "task", "prompt_id", "tokens_per_s", "wall_s", "new_tokens", "mean_accepted"]
PAIR_KEYS = ("target", "draft", "draft_compression", "max_new_tokens")
# What every unit holds: a resume must ask for the same (else its records would not be what profile.json says).
UNIT_KEYS = (*PAIR_KEYS, "gammas", "baseline", "seed")
# What `speckv report` reads from every file.
STEP_REQUIRED = (*SPECKV_STEP_COLUMNS, "prompt_id", "drafted", "draft_ms", "verify_ms", "draft_entropies",
                 "draft_confidences", "draft_margins")
RUN_REQUIRED = (*SPECKV_RUN_COLUMNS, "target", "draft", "draft_compression", "device", "threads", "torch",
                "transformers")


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


def unit_name(compression: str, prompt_id: str) -> str:
    return f"{compression}__{prompt_id.replace('/', '_')}.parquet"


def _same(a, b) -> bool:
    return (sorted(a) == sorted(b)) if isinstance(a, list) and isinstance(b, list) else a == b


def _refuse_other(out: Path, stored: dict, mine: dict, keys: tuple[str, ...], defaults: dict | None = None) -> None:
    """defaults: what a key missing from an older stored file meant."""
    theirs = {k: stored.get(k, (defaults or {}).get(k)) for k in keys}
    diff = ", ".join(f"{k}: {theirs[k]} != {mine[k]}" for k in keys if not _same(theirs[k], mine[k]))
    if diff:
        raise SpeckvError(f"{out} holds records of another setup ({diff}); use --force or another --out")


REPLACE_HINT = "use --force to replace it, or another --out"


def read_claim(path: Path, hint: str = REPLACE_HINT) -> dict:
    """A directory's setup file (profile.json, eval.json); damage is a SpeckvError naming it."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpeckvError(f"{path}: unreadable ({type(exc).__name__}); {hint}") from None
    if not isinstance(stored, dict):
        raise SpeckvError(f"{path}: not a speckv setup (a JSON object); {hint}")
    return stored


def claim_dir(out: Path, name: str, config: dict, keys: tuple[str, ...], force: bool,
              union: tuple[str, ...] = (), defaults: dict | None = None) -> dict:
    """Refuse to mix records of a different setup into one directory (unless forced), then record
    this setup in out/name, its `union` fields (lists) merged with the stored ones; returns it."""
    ensure_dir(out)
    meta_path = out / name
    mine = json.loads(json.dumps(config))  # tuples compare as lists
    if meta_path.is_file() and not force:
        stored = read_claim(meta_path)
        _refuse_other(out, stored, mine, keys, defaults)
        for k in union:
            if not isinstance(stored.get(k), list):
                raise SpeckvError(f"{meta_path}: {k} is not a list; {REPLACE_HINT}")
            mine[k] = list(dict.fromkeys([*stored[k], *mine[k]]))
    write_json(meta_path, mine)
    return mine


def _units(config: ProfileConfig, levels, tasks, per_task: int) -> set[str]:
    from speckv.data.tasks import select

    return {unit_name(lvl, p.id) for lvl in levels for task in tasks for p in select(task, per_task, config.seed)}


def _claim_profile(config: ProfileConfig, levels: list[str], out: Path, force: bool) -> None:
    """profile.json: the union of what the directory was set up for and this request, provided
    the union is still a compressions x tasks x prompts grid (else part of it would be claimed and
    never measured)."""
    mine = {**asdict(config), "compressions": levels}
    meta_path = out / "profile.json"
    if force or not meta_path.is_file():
        claim_dir(out, "profile.json", mine, UNIT_KEYS, force)
        return
    stored = read_claim(meta_path)
    _refuse_other(out, stored, json.loads(json.dumps(mine)), UNIT_KEYS)
    try:
        s_levels, s_tasks, s_n = list(stored["compressions"]), list(stored["tasks"]), int(stored["prompts_per_task"])
        old = _units(config, s_levels, s_tasks, s_n)
    except (KeyError, TypeError, ValueError, SpeckvError) as exc:
        raise SpeckvError(f"{meta_path}: damaged ({type(exc).__name__}); {REPLACE_HINT}") from None
    union = {"compressions": list(dict.fromkeys([*s_levels, *levels])),
             "tasks": list(dict.fromkeys([*s_tasks, *config.tasks])),
             "prompts_per_task": max(s_n, config.prompts_per_task)}
    grid = _units(config, union["compressions"], union["tasks"], union["prompts_per_task"])
    if grid != old | _units(config, levels, config.tasks, config.prompts_per_task):
        raise SpeckvError(
            f"{out} is set up for compressions {','.join(s_levels)} x tasks {','.join(s_tasks)} x {s_n} prompts; "
            f"adding compressions {','.join(levels)} x tasks {','.join(config.tasks)} x {config.prompts_per_task} "
            "prompts would leave part of the combined grid unmeasured: ask for the combined lists, or another --out")
    claim_dir(out, "profile.json", {**mine, **union}, UNIT_KEYS, force=False, union=("compressions", "tasks"))


def _gammas_held(path: Path) -> set[int]:
    """The gammas a finished unit holds (0 = the target alone)."""
    return set(read_parquet(path, ("gamma",), "run records")["gamma"].astype(int))


def run_profile(config: ProfileConfig, out: Path, force: bool = False, csv: bool = False, progress=None) -> int:
    """Profile every (compression, task prompt, gamma); returns the number of new units written."""
    from speckv.control import make_controller
    from speckv.data.tasks import select
    from speckv.models.compress import Compression

    levels = list(dict.fromkeys(Compression.parse(c).level for c in config.compressions))
    for g in config.gammas:
        make_controller(f"fixed:{g}")
    prompts = [(task, p) for task in config.tasks for p in select(task, config.prompts_per_task, config.seed)]
    with dir_lock(out):
        _claim_profile(config, levels, out, force)
        return _measure(config, levels, prompts, out, force, csv, progress)


def _measure(config: ProfileConfig, levels: list[str], prompts, out: Path, force: bool, csv: bool, progress) -> int:
    from speckv.api import Decoder
    from speckv.models.draft import load_draft
    from speckv.models.load import load_model

    ensure_dir(out / "steps")
    ensure_dir(out / "runs")
    gammas = {*([0] if config.baseline else []), *config.gammas}
    todo = []
    for lvl, task, p in ((lvl, task, p) for lvl in levels for task, p in prompts):
        path = out / "runs" / unit_name(lvl, p.id)
        if not path.is_file():
            todo.append((lvl, task, p))
        elif (held := _gammas_held(path)) != gammas:
            if not force:
                raise SpeckvError(f"{path} holds gammas {sorted(held)}, not {sorted(gammas)} (0 = target alone): "
                                  "resuming cannot change what a unit holds; use another --out, or --force to re-measure")
            todo.append((lvl, task, p))
    if progress:
        progress.start(len(levels) * len(prompts), len(levels) * len(prompts) - len(todo))
    draft = load_draft(config.draft, config.draft_compression, config.device) if todo else None
    written = 0
    for level in levels:
        units = [(task, p) for lvl, task, p in todo if lvl == level]
        if not units:
            continue
        target = load_model(config.target, level, config.device)
        dec = Decoder(target, draft)
        env = Environment.current(str(target.runner.device))
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
    """(steps, runs) of a profile directory; unreadable files, or files without the columns the
    report reads, are a user error naming the file."""
    frames = {}
    for kind, columns in (("steps", STEP_REQUIRED), ("runs", RUN_REQUIRED)):
        files = sorted((out / kind).glob("*.parquet"))
        if not files:
            raise SpeckvError(f"{out / kind}: no records (run speckv profile --out {out} first)")
        frames[kind] = pd.concat([read_parquet(f, columns, f"{kind} records") for f in files], ignore_index=True)
    return frames["steps"], frames["runs"]


def export_csv(out: Path) -> None:
    steps, runs = load_records(out)
    for name, df in (("steps.csv", steps), ("runs.csv", runs)):
        atomic_write(out / name, lambda tmp, df=df: df.to_csv(tmp, index=False))
