"""Read prompts from JSONL files (ours or Spec-Bench's `turns` format) and find Spec-Bench."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from speckv.data.bundled import SPEC_BENCH, bundled
from speckv.errors import SpeckvError

@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    category: str = ""
    line: int = 0  # 1-based line in the file it came from (0: not from a file)


def check_unicode(text: str, where: str = "prompt") -> None:
    """Refuse a lone UTF-16 surrogate (JSON "\\ud800" decodes to one): tokenizers and UTF-8
    output cannot encode it, and fail with a traceback far from the input."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SpeckvError(f"{where} has a lone UTF-16 surrogate {text[exc.start]!r} at character {exc.start}: "
                          "not valid Unicode text") from None


def read_jsonl(path: str | Path) -> list[Prompt]:
    """Each line: {"prompt": ...} or Spec-Bench's {"turns": [...]} (first turn). Errors name file:line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028 etc.
    except (OSError, UnicodeDecodeError) as exc:
        raise SpeckvError(f"cannot read prompts file {path}: {exc}") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpeckvError(f"{path}:{n}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise SpeckvError(f"{path}:{n}: expected a JSON object")
        text = row.get("prompt")
        if text is None and isinstance(row.get("turns"), list) and row["turns"]:
            text = row["turns"][0]
        if not isinstance(text, str) or not text.strip():
            raise SpeckvError(f"{path}:{n}: needs a non-empty 'prompt' string or a 'turns' list")
        check_unicode(text, f"{path}:{n}: prompt")
        pid = str(row.get("question_id", row.get("id", n)))
        prompts.append(Prompt(pid, text, str(row.get("category", "")), n))
    if not prompts:
        raise SpeckvError(f"{path}: no prompts")
    return prompts


def spec_bench_path() -> Path:
    """The Spec-Bench questions shipped in the package."""
    return bundled(SPEC_BENCH)


def spec_bench(categories: list[str] | None = None, per_category: int | None = None) -> list[Prompt]:
    """Spec-Bench prompts in file order, optionally filtered and capped per category."""
    prompts = read_jsonl(spec_bench_path())
    counts: dict[str, int] = {}
    out = []
    for p in prompts:
        if categories and p.category not in categories:
            continue
        if per_category is not None and counts.get(p.category, 0) >= per_category:
            continue
        counts[p.category] = counts.get(p.category, 0) + 1
        out.append(p)
    return out
