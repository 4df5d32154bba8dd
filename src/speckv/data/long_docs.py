"""Long documents for long-input benchmarks, built offline at run time to a token length.

Four kinds, alternated so any count mixes them:
- `multi-summary`: Spec-Bench summarization articles joined as "Document 1..n", then a request to
  summarize one document from the middle (the answer lives in one part of the prompt);
- `code-explain`: the head of a long source file of an installed third-party package (numpy,
  pandas, transformers, torch...), then a request to explain one function defined in it;
- `multi-rag`: Spec-Bench rag passages of several questions joined, then one of those questions;
- `code-continue`: the head of another such file, cut at a line, to be continued.

Lengths count the target tokenizer's tokens of the whole chat-templated prompt: each document is
the longest that fits `length` (and at least 90% of it). Source files depend on the installed
package versions: a prompt's id names the file and the package version. Which files and articles a
seed picks is deterministic for one environment.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import random
import re
from pathlib import Path

from speckv.data.bundled import SPEC_BENCH, bundled
from speckv.data.prompts import Prompt
from speckv.errors import SpeckvError

KINDS = ("multi-summary", "code-explain", "multi-rag", "code-continue")
LENGTHS = (2048, 4096, 8192, 16384)
#: packages whose long source files make code documents (those installed are used)
PACKAGES = ("transformers", "pandas", "numpy", "torch", "sklearn", "scipy", "sympy", "matplotlib")


def long_documents(tokenizer, length: int, count: int, seed: int = 0) -> list[Prompt]:
    """`count` documents of about `length` tokens (see above), kinds alternating."""
    if length < 512:
        raise SpeckvError(f"long documents start at 512 tokens (asked for {length})")
    rng = random.Random(f"long:{seed}:{length}")
    fit = _Fitter(tokenizer, length)
    files = _source_files(rng)
    out = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        if kind == "multi-summary":
            out.append(_multi_summary(fit, rng, i))
        elif kind == "multi-rag":
            out.append(_multi_rag(fit, rng, i))
        else:
            if not files:
                raise SpeckvError("no installed package has a source file long enough for a code document")
            path, package = files[(i // len(KINDS)) % len(files) if kind == "code-explain" else -1 - (i // len(KINDS)) % len(files)]
            out.append(_code(fit, kind, path, package, rng, i))
    return out


class _Fitter:
    """Counts chat-templated tokens and finds the longest prefix of parts that fits."""

    def __init__(self, tokenizer, length: int):
        self.tokenizer, self.length = tokenizer, length

    def count(self, text: str) -> int:
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)["input_ids"]
            return len(ids)
        return len(self.tokenizer(text)["input_ids"])

    def longest(self, parts: list[str], render) -> str:
        """render(parts[:n]) for the largest n whose tokens fit the length, then as many sentences
        of the next part as still fit (documents are long; the last one may be cut)."""
        n = self._largest(len(parts), lambda k: render(parts[:k]))
        if n < len(parts):
            sentences = re.split(r"(?<=[.!?\n])\s+", parts[n])
            m = self._largest(len(sentences), lambda k: render(parts[:n] + [" ".join(sentences[:k])]))
            if m:
                parts = parts[:n] + [" ".join(sentences[:m])]
                n += 1
        text = render(parts[:n])
        if self.count(text) < 0.9 * self.length:
            raise SpeckvError(f"not enough text for a {self.length}-token document")
        return text

    def _largest(self, high: int, render) -> int:
        """The largest k <= high with render(k) within the length (binary search; 0 if none)."""
        lo, hi = 0, high
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count(render(mid)) <= self.length:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _spec_bench(category: str) -> list[str]:
    rows = [json.loads(line) for line in bundled(SPEC_BENCH).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["turns"][0] for r in rows if r.get("category") == category]


def _multi_summary(fit: _Fitter, rng: random.Random, i: int) -> Prompt:
    articles = [re.sub(r"^Summarize:\s*", "", a).strip() for a in _spec_bench("summarization")]
    rng.shuffle(articles)

    def render(parts):
        k = max(1, (len(parts) + 1) // 2)
        docs = "\n\n".join(f"Document {n}:\n{a}" for n, a in enumerate(parts, 1))
        return f"{docs}\n\nSummarize Document {k} above in three sentences."

    return Prompt(f"long/multi-summary/{fit.length}/{i}", fit.longest(articles, render), "multi-summary")


def _multi_rag(fit: _Fitter, rng: random.Random, i: int) -> Prompt:
    items = []
    for text in _spec_bench("rag"):
        passages, _, question = text.strip().rpartition("\n")
        items.append((passages.strip(), question.strip()))
    rng.shuffle(items)
    asked = items[0][1]
    pool = [p for p, _ in items]

    def render(parts):
        ordered = list(parts[1:])
        ordered.insert(len(ordered) // 2, parts[0])  # the asked question's passages sit mid-prompt
        return "\n\n".join(ordered) + f"\n\nAnswer from the passages above: {asked}"

    return Prompt(f"long/multi-rag/{fit.length}/{i}", fit.longest(pool, render), "multi-rag")


def _code(fit: _Fitter, kind: str, path: Path, package: str, rng: random.Random, i: int) -> Prompt:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    version = _version(package)
    rel = f"{package}-{version}:{path.name}"

    if kind == "code-continue":
        def render(parts):
            return (f"Here is the beginning of {path.name} from {package}. Continue the code exactly where it "
                    f"stops; write only code.\n\n```python\n" + "\n".join(parts) + "\n")
        text = fit.longest(lines, render)
        return Prompt(f"long/code-continue/{fit.length}/{i}/{rel}", text, "code-continue")

    def render(parts, name="the function"):
        return "```python\n" + "\n".join(parts) + f"\n```\n\nExplain what `{name}` defined above does."

    names = re.findall(r"^\s*def (\w+)\(", fit.longest(lines, render), flags=re.M)
    name = names[len(names) // 2] if names else "the code"  # a function from the middle of what fits
    text = fit.longest(lines, lambda parts: render(parts, name))
    return Prompt(f"long/code-explain/{fit.length}/{i}/{rel}", text, "code-explain")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version({"sklearn": "scikit-learn"}.get(package, package))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _source_files(rng: random.Random, min_bytes: int = 80_000) -> list[tuple[Path, str]]:
    """Long .py files of the installed packages (largest first per package, then shuffled)."""
    found = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        files = sorted((p for p in root.rglob("*.py") if "test" not in p.parts[-2] and p.stat().st_size >= min_bytes),
                       key=lambda p: (-p.stat().st_size, str(p)))
        found += [(p, package) for p in files[:6]]
    found.sort(key=lambda item: str(item[0]))
    rng.shuffle(found)
    return found
