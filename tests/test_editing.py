"""The code-editing task: real functions from installed dependencies, pasted whole, with an edit to make."""

from __future__ import annotations

import ast
import re

from speckv.data import editing
from speckv.data.editing import KINDS, MAX_CHARS, MODULES, edit_prompts
from speckv.data.tasks import DEFAULT_TASKS, TASKS, split, task_pool

CODE = re.compile(r"```python\n(.*)```\Z", re.S)


def test_pool_is_real_deterministic_and_large_enough():
    pool = task_pool("edit")
    assert len(pool) >= 40
    assert pool == edit_prompts() == list(editing._pool.__wrapped__(MODULES))  # uncached rebuild: the same
    ids = [p.id for p in pool]
    assert len(set(ids)) == len(ids)
    for p in pool:
        kind, qualified = re.fullmatch(r"edit/([a-z-]+)/([\w.]+)", p.id).groups()
        assert kind == p.category and kind in KINDS
        assert qualified.split(".")[0] in {m.split(".")[0] for m in MODULES}
        source = CODE.search(p.text).group(1)
        tree = ast.parse(source)  # a whole, standalone function
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.FunctionDef)
        assert f"`{tree.body[0].name}` below" in p.text.split("\n")[0]  # the instruction names the function
        assert len(source) <= MAX_CHARS and "Return the whole edited function" in p.text
    assert len({p.category for p in pool}) >= 4  # several edit kinds


def test_rename_names_a_parameter_that_the_body_uses():
    for p in task_pool("edit"):
        if p.category == "rename-param":
            old, new = re.search(r"parameter `(\w+)` of `\w+` below to `(\w+)`", p.text).groups()
            fn = ast.parse(CODE.search(p.text).group(1)).body[0]
            assert old == [a.arg for a in (*fn.args.posonlyargs, *fn.args.args) if a.arg not in ("self", "cls")][0]
            assert new not in {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}


def test_split_is_disjoint_and_deterministic():
    train, test = split("edit", 6, 4, seed=0)
    assert len(train) == 6 and len(test) == 4
    assert not {p.id for p in train} & {p.id for p in test}
    again = split("edit", 6, 4, seed=0)
    assert [p.id for p in again[0]] == [p.id for p in train] and [p.id for p in again[1]] == [p.id for p in test]


def test_missing_module_is_skipped(monkeypatch):
    monkeypatch.setattr(editing, "MODULES", ("speckv_no_such_module.sub", "numpy"))
    pool = edit_prompts()
    assert pool and pool == edit_prompts(("numpy",))
    assert all(p.id.split("/")[2].startswith("numpy.") for p in pool)
    assert edit_prompts(("speckv_no_such_module",)) == []


def test_edit_is_a_task_by_name_not_a_default():
    assert TASKS == ("code", "math", "chat", "summarization", "edit", "rag", "translation")
    assert DEFAULT_TASKS == ("code", "math", "chat", "summarization")


def test_rag_and_translation_are_spec_bench_categories_by_name():
    from speckv.data.tasks import select

    for task in ("rag", "translation"):
        chosen = select(task, 4, seed=1)
        assert len({p.id for p in chosen}) == 4 and all(p.category == task and p.id.startswith(f"{task}/") for p in chosen)
