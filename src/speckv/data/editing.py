"""Code-editing prompts: a real function from an installed dependency, pasted whole, and an edit.

Editing is where users paste code and ask for it back changed a little (type hints, a rename, a
docstring, comments): the answer copies most of the prompt, which is where drafting pays most.

The functions are public, top-level Python functions of a fixed list of public modules of
speckv's own dependencies (numpy, pandas, scikit-learn, torch, transformers), read with
`inspect` and `ast`, so every install has them and nothing is downloaded. The pool is the same for
the same installed versions: modules are walked in list order, names sorted, each function kept
once (under the first module that exports it), and each function gets one edit kind picked by a
hash of its name (so a function added or removed by a new version leaves the others' prompts
alone). A module missing from an installed version is skipped. Prompt ids read
`edit/<kind>/<module>.<function>`, e.g. `edit/docstring/numpy.broadcast_to`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import warnings
import zlib
from functools import lru_cache

from speckv.data.prompts import Prompt

#: Public modules walked for functions, in this order (the first module exporting a function names it).
MODULES = (
    "numpy", "numpy.linalg", "numpy.fft", "numpy.ma", "numpy.lib.recfunctions", "numpy.polynomial.polyutils",
    "pandas", "pandas.plotting",
    "sklearn.metrics", "sklearn.metrics.pairwise", "sklearn.preprocessing", "sklearn.utils",
    "sklearn.utils.validation", "sklearn.datasets", "sklearn.feature_extraction.text",
    "torch.functional", "torch.nn.functional", "torch.nn.init",
    "transformers.pytorch_utils", "transformers.utils.generic",
)
MIN_LINES, MAX_LINES = 15, 60  # a function's own lines, decorators left out
MAX_CHARS = 3500  # of source: the prompt stays under ~1,500 Qwen tokens
KINDS = ("type-hints", "rename-param", "rename-local", "docstring", "comments")
_RETURN = "Return the whole edited function in a ```python block."


def _identifiers(node: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    names |= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
              for a in (*n.posonlyargs, *n.args, *n.kwonlyargs, n.vararg, n.kwarg) if a is not None}
    return names


def _new_name(old: str, suffix: str, taken: set[str]) -> str:
    new = f"{old}_{suffix}"
    while new in taken:
        new += "_"
    return new


def _edits(fn: ast.FunctionDef, label: str) -> dict[str, str]:
    """The instruction of every edit kind that makes sense for this function."""
    args = fn.args
    params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if a.arg not in ("self", "cls")]
    all_args = [a for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a is not None]
    loads = [n.id for stmt in fn.body for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    taken = _identifiers(fn)
    edits = {}
    if fn.returns is None and not any(a.annotation for a in all_args):
        edits["type-hints"] = (f"Add type hints to every parameter and to the return value of `{label}` below. "
                               f"Change nothing else. {_RETURN}")
    if params and params[0] in loads:
        old = params[0]
        new = _new_name(old, "in", taken)
        edits["rename-param"] = (f"Rename the parameter `{old}` of `{label}` below to `{new}`, consistently: in the "
                                 f"signature, the body and the docstring. Change nothing else. {_RETURN}")
    stores = sorted(((n.lineno, n.col_offset, n.id) for stmt in fn.body for n in ast.walk(stmt)
                     if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id not in params))
    local = next((name for _, _, name in stores if loads.count(name) >= 2), None)
    if local is not None:
        new = _new_name(local, "value", taken)
        edits["rename-local"] = (f"In `{label}` below, rename the local variable `{local}` to `{new}` everywhere it "
                                 f"is used. Change nothing else. {_RETURN}")
    doc = ast.get_docstring(fn) or ""
    if re.search(r"^\s*-{3,}\s*$", doc, re.M):  # numpy style already: ask for another style
        edits["docstring"] = (f"Convert the docstring of `{label}` below from numpy style to Google style (Args, "
                              f"Returns, Raises and Examples sections), keeping its content. Keep the code unchanged. "
                              f"{_RETURN}")
    else:
        edits["docstring"] = (f"Write a numpy-style docstring for `{label}` below (a summary line, then Parameters "
                              f"and Returns sections, and Raises if it raises), replacing its docstring if it has "
                              f"one. Keep the code unchanged. {_RETURN}")
    edits["comments"] = (f"Add short comments to `{label}` below explaining each step that is not obvious. Keep the "
                         f"code and the docstring unchanged. {_RETURN}")
    return edits


def _kind(edits: dict[str, str], key: str) -> str:
    """One edit kind per function, by a stable hash of its name (not by its place in the pool)."""
    kinds = [k for k in KINDS if k in edits]
    return kinds[zlib.crc32(key.encode()) % len(kinds)]


def _public_functions(module_name: str):
    """(name, function) of a module's public, top-level Python functions defined in its own package;
    nothing if the module is missing or fails to import."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception:  # missing in this version, or broken by an optional dependency: skipped
        return
    package = module_name.split(".")[0]
    names = getattr(module, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = dir(module)
    for name in sorted({n for n in names if isinstance(n, str) and not n.startswith("_")}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn = inspect.unwrap(getattr(module, name))
        except Exception:
            continue
        home = getattr(fn, "__module__", None) or ""
        if inspect.isfunction(fn) and (home == package or home.startswith(package + ".")) and "." not in fn.__qualname__:
            yield name, fn


def _source(fn) -> tuple[str, ast.FunctionDef] | None:
    """The function's own source (decorators left out) and its syntax tree, if within the caps."""
    try:
        lines, _ = inspect.getsourcelines(fn)
        tree = ast.parse("".join(lines))
    except (OSError, TypeError, SyntaxError, ValueError):
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef):
        return None
    own = lines[node.lineno - 1:node.end_lineno]
    text = "".join(own).rstrip() + "\n"
    if not MIN_LINES <= len(own) <= MAX_LINES or len(text) > MAX_CHARS or "\t" in text:
        return None
    try:
        tree = ast.parse(text)  # the function stands alone
    except SyntaxError:
        return None
    return text, tree.body[0]


def edit_prompts(modules: tuple[str, ...] | None = None) -> list[Prompt]:
    """The editing pool, sorted by module.function (deterministic for the same installed package versions)."""
    return list(_pool(tuple(MODULES if modules is None else modules)))


@lru_cache(maxsize=4)
def _pool(modules: tuple[str, ...]) -> tuple[Prompt, ...]:
    seen, prompts = set(), []
    for module_name in modules:
        for name, fn in _public_functions(module_name):
            if fn.__code__ in seen:
                continue
            seen.add(fn.__code__)
            found = _source(fn)
            if found is None:
                continue
            text, node = found
            qualified = f"{module_name}.{name}"
            edits = _edits(node, node.name)
            kind = _kind(edits, qualified)
            prompt = f"{edits[kind]}\n\n```python\n{text}```"
            prompts.append(Prompt(f"edit/{kind}/{qualified}", prompt, kind))
    return tuple(sorted(prompts, key=lambda p: p.id.split("/", 2)[2]))
