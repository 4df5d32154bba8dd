"""Token frequency ranking for a reduced-vocabulary draft head (see speckv.models.reduced_head).

The corpus is one every install has: a spread of the Python standard library's own `.py` sources
(test suites, idlelib and any site-packages below it left out, files over MAX_FILE skipped, every
k-th file taken in path order so the total stays near CORPUS_BYTES), all turns of the Spec-Bench
questions shipped in the package, and the code-editing prompts (speckv.data.editing). Ids are
ranked by count, most frequent first; ties and ids never seen follow in id order, so the ranking
is a permutation of range(vocabulary). (For a BPE vocabulary a lower id is an earlier merge, i.e.
a token frequent in the tokenizer's own training data: a fair order for the unseen tail.)

Invariants:
* A ranking is only used with the tokenizer it was counted with: files are keyed by a sha256 of
  the tokenizer's vocabulary (token -> id), and a key that does not match is ignored.
* The built-in Qwen2.5 tokenizer's ranking ships in the package (SHIPPED); any other tokenizer's
  is counted once (well under a minute) and cached under cache_home()/token_ranking, written
  atomically (a concurrent count writes the same bytes; nothing half-written is ever read).
* Files hold only the seen ids in rank order (the unseen tail is implied), keeping SHIPPED small.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from speckv.data.bundled import bundled
from speckv.files import atomic_write

#: the Qwen2.5 tokenizer's ranking, shipped in speckv/data
SHIPPED = "token_ranking/qwen2.5.npz"
#: bumped whenever the corpus changes, so cached rankings of the old corpus are not reused
CORPUS_VERSION = 1
CORPUS_BYTES = 4 << 20  # of standard library source
MAX_FILE = 256 << 10
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo"}
_CHUNK = 16 << 10  # characters per tokenizer call (at line breaks), under any model_max_length warning


def vocab_hash(tokenizer) -> str:
    """sha256 of the tokenizer's token -> id map (the key a ranking file is stored under)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def vocab_count(tokenizer) -> int:
    """Number of ids the tokenizer can produce (largest id + 1)."""
    return max(tokenizer.get_vocab().values()) + 1


def stdlib_files(budget: int = CORPUS_BYTES) -> list[Path]:
    """Every k-th eligible standard library source file in path order, about `budget` bytes in all."""
    root = Path(os.__file__).parent
    eligible = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if 0 < size <= MAX_FILE:
            eligible.append((path, size))
    total = sum(size for _, size in eligible)
    stride = max(1, math.ceil(total / budget))
    return [path for path, _ in eligible[::stride]]


def corpus() -> Iterator[str]:
    """The texts token frequencies are counted over (see the module docstring)."""
    from speckv.data.editing import edit_prompts
    from speckv.data.prompts import spec_bench_path

    for path in stdlib_files():
        try:
            yield path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    with open(spec_bench_path(), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield from (t for t in json.loads(line).get("turns", []) if isinstance(t, str))
    for prompt in edit_prompts():
        yield prompt.text


def _chunks(text: str, size: int = _CHUNK) -> Iterator[str]:
    start = 0
    while start < len(text):
        end = len(text) if len(text) - start <= size else text.rfind("\n", start, start + size) + 1
        if end <= start:
            end = start + size
        yield text[start:end]
        start = end


def token_counts(tokenizer, texts) -> np.ndarray:
    """How often each id of the tokenizer occurs in texts (length vocab_count(tokenizer))."""
    size = vocab_count(tokenizer)
    counts = np.zeros(size, dtype=np.int64)
    for text in texts:
        for chunk in _chunks(text):
            ids = np.asarray(tokenizer(chunk, add_special_tokens=False)["input_ids"], dtype=np.int64)
            counts += np.bincount(ids[(ids >= 0) & (ids < size)], minlength=size)
    return counts


def rank(counts: np.ndarray) -> np.ndarray:
    """Ids by count, most frequent first; ties (unseen ids included) in id order."""
    return np.argsort(-counts, kind="stable")


def _full(seen: np.ndarray, size: int) -> np.ndarray:
    """The seen ids in rank order, then every other id in id order."""
    rest = np.setdiff1d(np.arange(size, dtype=np.int64), seen, assume_unique=True)
    return np.concatenate([seen.astype(np.int64), rest])


def write_ranking(path: Path, ranking: np.ndarray, key: str, seen: int) -> Path:
    """Store the first `seen` ids of ranking under key (atomically, compressed)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez_compressed(f, seen=ranking[:seen].astype(np.int32), size=np.int64(len(ranking)),
                                vocab_hash=np.str_(key), corpus_version=np.int64(CORPUS_VERSION))

    return atomic_write(path, write)


def read_ranking(path: Path, key: str) -> np.ndarray | None:
    """The ranking stored at path if it was counted for this vocabulary (key), else None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["vocab_hash"]) != key or int(data["corpus_version"]) != CORPUS_VERSION:
                return None
            seen, size = data["seen"], int(data["size"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or damaged: count again
        return None
    if seen.ndim != 1 or len(np.unique(seen)) != len(seen) or (len(seen) and (seen.min() < 0 or seen.max() >= size)):
        return None
    return _full(seen, size)


def cache_path(key: str) -> Path:
    from speckv.models.provision import cache_home

    return cache_home() / "token_ranking" / f"{key[:24]}-v{CORPUS_VERSION}.npz"


def token_ranking(tokenizer) -> np.ndarray:
    """Token ids of this tokenizer, most frequent first: the shipped ranking for Qwen2.5, else a
    cached one, else counted over corpus() now and cached."""
    key = vocab_hash(tokenizer)
    ranking = read_ranking(bundled(SHIPPED), key)
    if ranking is None:
        path = cache_path(key)
        ranking = read_ranking(path, key)
        if ranking is None:
            counts = token_counts(tokenizer, corpus())
            ranking = rank(counts)
            write_ranking(path, ranking, key, int(np.count_nonzero(counts)))
    return ranking


def main() -> None:
    """Re-count the shipped ranking: python -m speckv.data.token_freq (after a corpus change)."""
    from transformers import AutoTokenizer

    from speckv.models.provision import model_path
    from speckv.models.registry import DEFAULT_DRAFT

    tokenizer = AutoTokenizer.from_pretrained(model_path(DEFAULT_DRAFT))
    counts = token_counts(tokenizer, corpus())
    path = write_ranking(Path(__file__).parent / SHIPPED, rank(counts), vocab_hash(tokenizer), int(np.count_nonzero(counts)))
    print(f"{path}: {np.count_nonzero(counts)} of {len(counts)} ids seen, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
