"""Held-out evaluation of controllers: traces, cost calibration, replay and live runs, side by side.

Layout of an evaluation directory (everything resumable, one file per unit, written atomically):
    traces/{train,test}/<compression>/<prompt>.parquet   teacher-forced draft traces
    cost/<compression>.json                              the calibrated cost model (copy)
    controllers/*.json                                   trained artifacts (copies)
    units/<compression>__<prompt>.{runs,steps}.parquet   replay + live results per prompt
    runs.parquet, steps.parquet, eval.html               the assembled results and report
Prompts are split by prompt (data.tasks.split): training never sees a test prompt.
A finished unit is never re-run: asking it for controllers (or live runs) it does not hold is refused
rather than reported as if it held them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
from transformers.utils import is_sklearn_available

from speckv.api import Decoder
from speckv.bench.side_by_side import hf_settings, run_method
from speckv.control import cost_path
from speckv.control.artifact import Setup, default_path
from speckv.control.spec import ControllerSpec
from speckv.control.train import heterospec_trainable, train_cost_aware, train_heterospec, train_speckv
from speckv.data.prompts import Prompt
from speckv.data.tasks import DEFAULT_TASKS, TASKS, split
from speckv.errors import SpeckvError
from speckv.files import read_parquet, write_parquet
from speckv.cost import CalibrationRun, CostModel
from speckv.measure.profile import read_claim
from speckv.measure.replay import oracle, replay
from speckv.measure.trace import collect_trace, load_trace, load_traces, save_trace

# hf-confidence at 16 tokens, not transformers' 20: traces hold 15 draft tokens after a mismatch.
CONTROLLERS = ("fixed:4", "hf-heuristic", "hf-confidence:16", "p-min", "speckv", "cost-aware", "oracle")
BASELINES = ("autoregressive", "hf-assisted")
CALIBRATION = ("autoregressive", "fixed:1", "fixed:2", "fixed:4", "fixed:8", "p-min")


def _spec(text: str) -> ControllerSpec:
    """An evaluation's controller or baseline: the oracle (replay only) and hf-assisted (live only) too."""
    return ControllerSpec.parse(text, allow_replay_only=True, allow_external=True)


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...] = DEFAULT_TASKS  # edit by name only: committed eval.json files record these four
    compressions: tuple[str, ...] = ("bf16", "int8", "nf4")
    controllers: tuple[str, ...] = CONTROLLERS
    baselines: tuple[str, ...] = BASELINES
    train_per_task: int = 6
    test_per_task: int = 4
    max_new_tokens: int = 128
    seed: int = 0
    depth: int = 15  # free-running draft tokens recorded after each mismatch
    target: str = "qwen2.5-coder-1.5b-instruct"
    draft: str = "qwen2.5-coder-0.5b-instruct"
    draft_compression: str = "bf16"
    device: str = "auto"
    drafter: str = "model"  # model, lookup[:..] or hybrid[:..]: what replay and the live runs draft with
    backend: str = "torch"  # torch or llamacpp (directories from before backends are torch's)

    def setup(self, level: str) -> Setup:
        from speckv.models.load import pick_device

        return Setup(self.target, self.draft, level, self.draft_compression, pick_device(self.device).type,
                     backend=self.backend)

    def prompts(self, part: str) -> list[tuple[str, Prompt]]:
        index = 0 if part == "train" else 1
        return [(t, p) for t in self.tasks for p in split(t, self.train_per_task, self.test_per_task, self.seed)[index]]


def load_eval_config(path: Path) -> EvalConfig:
    """An evaluation directory's eval.json; damage (bad JSON, unknown keys, wrong types) is a
    SpeckvError naming the file."""
    from speckv.drafting import parse_drafter
    from speckv.models.compress import Compression

    data = read_claim(path, "`speckv trace --force` rewrites it")
    known = {f.name for f in fields(EvalConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpeckvError(f"{path}: unknown keys {', '.join(unknown)} (not written by speckv trace)")
    defaults, values = EvalConfig(), {}
    for key, value in data.items():
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
            kind, value = "a non-empty list of strings", tuple(value) if isinstance(value, list) else value
        elif isinstance(default, int):
            ok = type(value) is int and (value >= 1 or key == "seed")
            kind = "an integer" if key == "seed" else "a positive integer"
        else:
            ok, kind = isinstance(value, str), "a string"
        if not ok:
            raise SpeckvError(f"{path}: {key} must be {kind} (got {json.dumps(value)})")
        values[key] = value
    unknown_tasks = [t for t in values.get("tasks", ()) if t not in TASKS]
    if unknown_tasks:
        raise SpeckvError(f"{path}: unknown task(s) {', '.join(unknown_tasks)}")
    try:
        from speckv.models.load import parse_level

        if values.get("backend", "torch") not in ("torch", "llamacpp"):
            raise SpeckvError(f"backend must be torch or llamacpp (got {values['backend']!r})")
        for level in (*values.get("compressions", ()), values.get("draft_compression", "bf16")):
            parse_level(level, values.get("backend", "torch"))
        values["drafter"] = str(parse_drafter(values.get("drafter", "model")))
    except SpeckvError as exc:
        raise SpeckvError(f"{path}: {exc}") from None
    return EvalConfig(**values)


def trace_path(out: Path, part: str, level: str, prompt_id: str) -> Path:
    return out / "traces" / part / level / (prompt_id.replace("/", "_") + ".parquet")


def unit_path(out: Path, level: str, prompt_id: str, kind: str) -> Path:
    """One held-out prompt's results at one level; kind is "runs" or "steps" (runs marks it done)."""
    return out / "units" / f"{level}__{trace_path(out, 'test', level, prompt_id).stem}.{kind}.parquet"


class Session:
    """A loaded pair at one target compression (the draft is loaded once and shared)."""

    def __init__(self, config: EvalConfig, draft=None):
        from speckv.models.draft import load_draft

        self.config = config
        self.draft = draft or load_draft(config.draft, config.draft_compression, config.device, config.backend)

    def decoder(self, level: str) -> Decoder:
        from speckv.models.load import load_model

        return Decoder(load_model(self.config.target, level, self.config.device, self.config.backend), self.draft, "fixed:4",
                       drafter=self.config.drafter)


def collect(dec: Decoder, config: EvalConfig, out: Path, part: str, progress=None) -> list[Path]:
    """Traces for the train or test prompts at the decoder's compression (skips existing ones)."""
    level = dec.setup.compression
    paths = []
    for task, prompt in config.prompts(part):
        path = trace_path(out, part, level, prompt.id)
        paths.append(path)
        if path.is_file():
            continue
        meta = {"prompt_id": prompt.id, "task": task, "compression": level, "target": config.target,
                "draft": config.draft, "draft_compression": config.draft_compression, "device": dec.setup.device}
        trace = collect_trace(dec.target.runner, dec.draft.runner, dec.encode(prompt.text), config.max_new_tokens,
                              dec.stop_ids, config.depth, meta)
        save_trace(trace, path)
        if progress:
            progress.advance()
    return paths


def calibrate(dec: Decoder, prompts: list[Prompt], max_new_tokens: int, specs=CALIBRATION) -> tuple[CostModel, list[dict]]:
    """Fit the cost model to live runs; also report each run's predicted vs measured wall time."""
    runs, rows = [], []
    for prompt in prompts:
        ids = dec.encode(prompt.text)
        for spec in specs:
            r = dec.generate(ids, controller=spec, max_new_tokens=max_new_tokens)
            runs.append(CalibrationRun(len(ids), r.steps, r.stats.wall_s, r.stats.prefill_ms))
            rows.append({"prompt_id": prompt.id, "controller": spec, "new_tokens": r.stats.new_tokens,
                         "wall_s": r.stats.wall_s})
    import torch

    meta = {**dec.setup.__dict__, "threads": torch.get_num_threads(), "runs": len(runs)}
    cost = CostModel.fit(runs, meta)
    for row, run in zip(rows, runs):
        row["predicted_s"] = cost.wall_s(run.steps, run.prompt_len)
    return cost, rows


def save_cost(cost: CostModel, dec: Decoder, out: Path | None) -> Path:
    cost.save(cost_path(dec.setup))
    if out is not None:
        cost.save(out / "cost" / f"{dec.setup.compression}.json")
    return cost_path(dec.setup)


def train(config: EvalConfig, out: Path, levels: tuple[str, ...] | None = None) -> list[Path]:
    """Train cost-aware for `levels` (default: every level of the directory) and SpecKV's MLP on the
    training traces of every traced level (the paper's joint model), saved for `levels` only: the
    artifacts of other levels stay as they were, so their finished evaluations stay reproducible."""
    levels = levels or config.compressions
    traced = [lvl for lvl in config.compressions if any((out / "traces" / "train" / lvl).glob("*.parquet"))]
    traces = {level: load_traces(out / "traces" / "train" / level) for level in dict.fromkeys([*traced, *levels])}
    written = []
    for level in levels:
        setup = config.setup(level)
        if not cost_path(setup).is_file():
            raise SpeckvError(f"no cost model for {setup.slug()}; run `speckv calibrate` first")
        art = train_cost_aware(traces[level], setup, CostModel.load(cost_path(setup)))
        written.append(art.save(default_path("cost-aware", setup)))
        art.save(out / "controllers" / default_path("cost-aware", setup).name)
        if heterospec_trainable(traces[level]):
            art = train_heterospec(traces[level], setup)
            written.append(art.save(default_path("heterospec", setup)))
            art.save(out / "controllers" / default_path("heterospec", setup).name)
    everything = [t for ts in traces.values() for t in ts]
    for art in train_speckv(everything, [config.setup(level) for level in levels]):
        written.append(art.save(default_path("speckv", art.setup)))
        art.save(out / "controllers" / default_path("speckv", art.setup).name)
    return written


def _run_row(base: dict, controller: str, new_tokens: int, wall_s: float, steps) -> dict:
    return {**base, "controller": controller, "new_tokens": new_tokens, "wall_s": wall_s,
            "tokens_per_s": new_tokens / wall_s if wall_s > 0 else float("nan"), "steps": len(steps) if steps else None,
            "mean_accepted": sum(s.accepted for s in steps) / len(steps) if steps else None,
            "mean_drafted": sum(s.drafted for s in steps) / len(steps) if steps else None,
            # all controller calls of a step (budget, keep_drafting per draft, observe), in ms
            "control_ms_per_step": sum(s.control_ms for s in steps) / len(steps) if steps else None}


def _step_rows(base: dict, controller: str, steps) -> list[dict]:
    return [{**base, "controller": controller, "step": s.step, "context_len": s.context_len, "budget": s.budget,
             "drafted": s.drafted, "accepted": s.accepted, "emitted": s.emitted, "draft_ms": s.draft_ms,
             "verify_ms": s.verify_ms, "control_ms": s.control_ms} for s in steps]


def evaluate_prompt(dec: Decoder, config: EvalConfig, trace_path: Path, cost: CostModel, rotate: int,
                    live: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replay every controller on one held-out trace, then run all but the oracle live, interleaved."""
    trace = load_trace(trace_path)
    base = {"compression": dec.setup.compression, "task": trace.meta["task"], "prompt_id": trace.meta["prompt_id"]}
    runs, steps = [], []
    attended = getattr(dec.engine.draft, "attended", None)  # a long-context window: the prompt the draft reads
    attended = attended(len(trace.prompt_ids)) if attended is not None else None
    for spec in (*config.baselines, *config.controllers):
        parsed = _spec(spec)
        if not parsed.replayable:
            continue  # transformers' and llama-server's loops, and trees, run live only
        drafter = config.drafter
        controller = oracle(trace, cost, drafter, attended=attended) if parsed.replay_only else dec.make_controller(parsed)
        t0 = time.perf_counter()
        replayed = replay(trace, controller, cost, drafter, attended)
        row = _run_row({**base, "mode": "replay"}, spec, len(trace.output_ids),
                       cost.wall_s(replayed, len(trace.prompt_ids)), replayed)
        row["replay_s"] = time.perf_counter() - t0
        runs.append(row)
        steps += _step_rows({**base, "mode": "replay"}, spec, replayed)
    if live:
        methods = [m for m in (*config.baselines, *config.controllers) if not _spec(m).replay_only]
        methods = methods[rotate % len(methods):] + methods[: rotate % len(methods)]  # vary the order per prompt
        for spec in methods:
            parsed = _spec(spec)
            if parsed.external:
                r = run_method(dec, spec, base["prompt_id"], trace.prompt_ids, config.max_new_tokens)
                row = _run_row({**base, "mode": "live"}, spec, r.new_tokens, r.wall_s, None)
                row["identical"] = r.token_ids == trace.output_ids
                row["settings"] = json.dumps({**hf_settings(spec), "sklearn": is_sklearn_available()})
                runs.append(row)
                continue
            result = dec.generate(trace.prompt_ids, controller=parsed, max_new_tokens=config.max_new_tokens)
            row = _run_row({**base, "mode": "live"}, spec, result.stats.new_tokens, result.stats.wall_s, result.steps)
            row["identical"] = result.token_ids == trace.output_ids
            row["prefill_ms"] = result.stats.prefill_ms  # lets the cost model be refit on these runs
            runs.append(row)
            steps += _step_rows({**base, "mode": "live"}, spec, result.steps)
    return pd.DataFrame(runs), pd.DataFrame(steps)


def unit_done(out: Path, level: str, prompt_id: str, config: EvalConfig, live: bool = True) -> bool:
    """Whether a prompt's unit is finished and holds what config asks for; a finished unit that lacks
    a requested controller (or live runs) is refused: it is never re-run, nor reported as if it held them."""
    path = unit_path(out, level, prompt_id, "runs")
    if not path.is_file():
        return False
    runs = read_parquet(path, ("mode", "controller"), "evaluation runs")
    wanted = {("replay", c) for c in (*config.baselines, *config.controllers) if _spec(c).replayable}
    if live:
        wanted |= {("live", c) for c in (*config.baselines, *config.controllers) if not _spec(c).replay_only}
    missing = sorted(wanted - set(zip(runs["mode"], runs["controller"])))
    if missing:
        lacking = ", ".join(f"{c} ({m})" for m, c in missing)
        raise SpeckvError(f"{path} is finished without {lacking}: units are never re-run; evaluate those into "
                          f"another --out (copy eval.json, traces/ and cost/), or delete {out / 'units'} to re-run all")
    return True


def evaluate(dec: Decoder, config: EvalConfig, out: Path, live: bool = True, progress=None) -> int:
    """Evaluate all test prompts at the decoder's compression; returns the number of new units."""
    level = dec.setup.compression
    test_ids = [p.id for _, p in config.prompts("test")]
    if all([unit_done(out, level, pid, config, live) for pid in test_ids]):
        return 0  # finished: re-reporting needs neither the cost model nor the trained controllers
    if not cost_path(dec.setup).is_file():
        raise SpeckvError(f"no cost model for {dec.setup.slug()}; run `speckv calibrate` first")
    cost = CostModel.load(cost_path(dec.setup))
    for spec in map(_spec, config.controllers):  # fail on a missing artifact before hours of work
        if not spec.replay_only:
            dec.make_controller(spec)
    traces = collect(dec, config, out, "test")  # in the order of test_ids
    written = 0
    for i, (pid, path) in enumerate(zip(test_ids, traces)):
        if unit_done(out, level, pid, config, live):
            continue
        runs, steps = evaluate_prompt(dec, config, path, cost, i, live)
        write_parquet(steps, unit_path(out, level, pid, "steps"))
        write_parquet(runs, unit_path(out, level, pid, "runs"))  # runs last: it marks the unit done
        written += 1
        if progress:
            progress.advance()
    return written


def assemble(out: Path) -> tuple[Path, Path]:
    """Concatenate the per-prompt units into runs.parquet and steps.parquet."""
    paths = []
    for kind in ("runs", "steps"):
        files = sorted((out / "units").glob(f"*.{kind}.parquet"))
        if not files:
            raise SpeckvError(f"{out}: no evaluation units yet")
        path = out / f"{kind}.parquet"
        write_parquet(pd.concat([read_parquet(f, what="evaluation units") for f in files], ignore_index=True), path)
        paths.append(path)
    return tuple(paths)
