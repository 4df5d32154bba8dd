"""Incremental detokenization: the text of a growing token sequence, decoding only a short window.

Re-decoding the whole output every step costs O(n) per step, O(n^2) per generation. Like vLLM and
TGI, we decode only `ids[prefix:]`, where `ids[prefix:read]` is already final and is decoded again
only as context, and take the text past that context's text as the new text.

Invariants:
- `text` equals `tokenizer.decode(ids, skip_special_tokens=True)` of all ids added so far, and
  `text_len(n)` equals `len(decode(ids[:n]))` (tested on the shipped byte-level BPE tokenizers and
  a SentencePiece-style one, over random ids too). The Decoder relies on both for exact output.
- `final` only grows, and `text` starts with it except while `rewritten` (below). Text becomes
  final once the window's new text does not end in "\\ufffd" (an incomplete UTF-8 sequence that
  the next token may complete). Commit points (`prefix`, `read`) therefore sit on character
  boundaries, where a window decodes like the full text.
- The context `ids[prefix:read]` is what the last commit added: at least one token with text, so
  a SentencePiece first token keeps its leading space (decoded alone, "▁world" loses it).
- Cost: at most two decode calls per `add`, over `ids[prefix:]` only (a few tokens, unless a model
  keeps emitting invalid UTF-8), never the whole output; except below.
- Exceptions, exact but O(n): a step whose window does not start with its context's text decodes
  everything (`rewritten`: SentencePiece byte fallback turns a byte run that is not yet valid
  UTF-8 into one "\\ufffd" per byte, the context's bytes included, until the character completes).
  If the window is complete and still disagrees, or the tokenizer cleans up spaces (" ." -> "."),
  every step decodes everything (`full`). Pieces never retract, so when decoding rewrites final
  text for good, no piece is returned until `text` extends `final` again.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

_PARTIAL = "\ufffd"  # what decode gives for bytes that do not (yet) form a character


def _cleans_up_spaces(tokenizer: Any) -> bool:
    """Whether decode removes spaces before punctuation (" ." -> "."), which can reach back across
    any number of tokens. The flag alone is not enough: transformers 5 ignores it for BPE models."""
    if not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return False
    try:
        ids = tokenizer("a . b 's", add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids) != tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    except Exception:  # noqa: BLE001 - a tokenizer we cannot probe: assume it cleans up
        return True


@dataclass
class Detokenizer:
    """Text of token ids added step by step; `add` returns the text that became final."""

    tokenizer: Any  # anything with decode(ids, skip_special_tokens=...)
    skip_special_tokens: bool = True
    ids: list[int] = field(default_factory=list)
    final: str = ""  # committed text: never changes, ends on a character boundary
    tail: str = ""  # text of ids[read:] as decoded now; may still change (ends in "\ufffd")
    prefix: int = 0  # window start: ids[prefix:read] is context, already in `final`
    read: int = 0  # ids[:read] is committed
    full: bool = False  # decode everything every step (see the module's invariants)
    rewritten: str | None = None  # the full decode, on steps where it does not extend `final`
    _context: str | None = ""  # decode(ids[prefix:read]); None: not decoded yet
    _marks: list[int] = field(default_factory=lambda: [0])  # every `read` so far
    _mark_lens: list[int] = field(default_factory=lambda: [0])  # len(final) at each mark

    def __post_init__(self) -> None:
        self.full = self.full or _cleans_up_spaces(self.tokenizer)

    @property
    def text(self) -> str:
        """Everything decoded so far, the pending tail included."""
        return self.rewritten if self.rewritten is not None else self.final + self.tail

    @property
    def stable(self) -> int:
        """How many leading characters of `text` no later `add` changes, so a search for stop
        strings need not look there again (0 while decoding rewrites final text)."""
        return len(self.final) if self.rewritten is None else 0

    def _decode(self, start: int, end: int) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=self.skip_special_tokens)

    def add(self, ids: list[int]) -> str:
        """Append ids; return the text that became final (possibly "")."""
        self.ids.extend(ids)
        if self.full:
            return self._extend(self._decode(0, len(self.ids)))
        if self._context is None:
            self._context = self._decode(self.prefix, self.read)
        window = self._decode(self.prefix, len(self.ids))
        if window.startswith(self._context):
            self.rewritten = None
            return self._pending(window[len(self._context):])
        if window.endswith(_PARTIAL):  # a byte run not yet a character regroups the context's bytes
            self.rewritten = self._decode(0, len(self.ids))
            return ""
        self.full = True  # complete text that disagrees with its context: window decoding is unsafe
        return self._extend(self._decode(0, len(self.ids)))

    def _extend(self, text: str) -> str:
        """Full mode: the new text past `final`, if the decode still extends it."""
        if not text.startswith(self.final):
            self.rewritten = text
            return ""
        self.rewritten = None
        return self._pending(text[len(self.final):])

    def _pending(self, tail: str) -> str:
        self.tail = tail
        if not tail or tail.endswith(_PARTIAL):  # no text yet, or a character not complete
            return ""
        return self._commit()

    def _commit(self) -> str:
        piece, self.final, self.tail = self.tail, self.final + self.tail, ""
        self.prefix, self.read, self._context = self.read, len(self.ids), None
        self._marks.append(self.read)
        self._mark_lens.append(len(self.final))
        return piece

    def flush(self) -> str:
        """At the end of a run: commit the pending tail, even an incomplete character ("" if the
        text no longer extends `final`: a piece is never retracted)."""
        if self.rewritten is not None:
            if not self.rewritten.startswith(self.final):
                return ""
            self.tail, self.rewritten = self.rewritten[len(self.final):], None
        return self._commit() if self.tail else ""

    def text_len(self, n: int) -> int:
        """len(decode(ids[:n])), decoded from the commit point before n (two short decodes)."""
        if self.full:
            return len(self._decode(0, n))
        i = bisect_right(self._marks, n) - 1
        mark, base = self._marks[i], self._mark_lens[i]
        if mark == n:
            return base
        start = self._marks[i - 1] if i > 0 else 0  # the context ids[mark:] were decoded with
        context, window = self._decode(start, mark), self._decode(start, n)
        if not window.startswith(context):  # as in add(): this prefix decodes only in full
            return len(self._decode(0, n))
        return base + len(window) - len(context)
