"""Long inputs: what part of the prompt the draft model attends to (SpecExtend's working cache).

A draft's guesses need the prompt, but its attention over a 16K-token prompt costs it on every
drafted token. `--long-context` picks what the draft keeps:
- `full`: everything (the default for short prompts);
- `window`: StreamingLLM's attention sinks (the first few tokens) and the most recent tokens; the
  draft reads only those, so it also skips most of the prompt's prefill;
- `retrieval`: SpecExtend's cross-model retrieval: the draft reads the whole prompt once into a
  full cache, then attends to a working cache of the prompt chunks that the *target's* last-layer
  attention (of the newest accepted token, averaged over heads) ranks highest plus the most recent
  tokens, re-chosen every `refresh` verification steps (first selection: the most recent chunks);
  `read=lazy` skips the full read (on CPU the draft's prefill of a 16K prompt costs half the
  target's): the draft reads the window first and each chunk when it is first chosen, after the
  sinks alone (its deeper layers then lack the rest of the prompt: cheaper, less informed);
- `auto`: retrieval (read lazily unless `read=full`) from a prompt length the cost model chooses
  (`threshold`); below it, a prompt longer than `window` (128) gets a window of that many tokens
  (the draft's read of a 1.5K-token prompt costs it 2 s that a hybrid run, which copies from the
  whole prompt by lookup anyway, rarely earns back: docs/drafters.md; a Decoder drafting with the
  model alone sets window=0, since there the draft needs the prompt itself); full for the rest.

Invariants:
- Losslessness never depends on this: only the draft's cache changes; the target verifies.
- A WorkingCache is a Sequence over *true* indices (the ids the run has accepted): `len()` is how
  many ids it stands for, and forward/compact/truncate take true indices, so ChainDrafter drives
  it exactly like a plain cache. Underneath, the working sequence holds a selection of the prompt
  packed at positions 0..k-1 (keys re-rotated when moved: backends/hf.py `gather`), then the
  *tail*: every id since the selection's last entry, in order (true index = working index + offset).
- Selections change only between steps, at commit(), when the cache holds exactly the accepted ids.
- A backend whose sequences cannot `gather` (llama.cpp: one context per sequence) runs `window`
  by reading the sinks and recent tokens once and then evicting in place (`evict`: llama.cpp's own
  context shift drops the oldest tail entries and re-rotates the rest), so the window stays
  bounded however long the output; a model whose cache cannot shift keeps every id instead.
  Retrieval needs gather and is refused there (api.py).
- The full cache (retrieval) holds every accepted id it has read (`where`: true index -> entry):
  the prompt as read, later ids as computed in the working cache (SpecExtend does the same),
  synced before each re-selection. With read=full it holds every id in order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from speckv.errors import SpeckvError

MODES = ("full", "window", "retrieval", "auto")
LONGEST = 1 << 17  # auto's threshold search stops here; a threshold above it never turns retrieval on
NEVER = LONGEST + 1
OPTIONS = ("budget", "chunk", "refresh", "sinks", "threshold", "read", "window")
#: the most recent ids every working cache keeps, in chunks (retrieval) on top of the ranked ones
RECENT_CHUNKS = 2


@dataclass(frozen=True)
class LongContext:
    """A validated `--long-context` spec: MODE[:budget=N,chunk=N,refresh=N,sinks=N,threshold=N,read=R,window=N]."""

    mode: str = "full"
    budget: int = 1024  # tokens of the prompt the working cache holds
    chunk: int = 32  # retrieval's unit: attention is averaged over chunks of this many tokens
    refresh: int = 4  # retrieval re-chooses chunks every this many verification steps
    sinks: int = 4  # window: the first tokens always kept (attention sinks)
    threshold: int | None = None  # auto: retrieval from this prompt length (None: not chosen yet)
    read: str | None = None  # retrieval: the whole prompt first (full) or chunks when chosen (lazy); None: `reads`
    window: int = 128  # auto, below the threshold: a window of this many tokens for longer prompts (0: none)

    @classmethod
    def parse(cls, spec: str | LongContext | None) -> LongContext:
        if spec is None:
            return cls()
        if isinstance(spec, LongContext):
            spec.check()
            return spec
        if not isinstance(spec, str):
            raise SpeckvError(f"long context must be a spec such as 'retrieval' (got {spec!r})")
        mode, _, args = spec.strip().partition(":")
        if mode not in MODES:
            raise SpeckvError(f"unknown long-context mode {mode!r}; available: {', '.join(MODES)}")
        values: dict[str, int | str] = {}
        for part in filter(None, args.split(",")):
            key, eq, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if key not in OPTIONS or not eq:
                raise SpeckvError(f"long context {spec!r}: unknown option {part!r} "
                                  "(options: budget=N, chunk=N, refresh=N, sinks=N, threshold=N, read=full|lazy, window=N)")
            if key == "read":
                values[key] = value
                continue
            try:
                values[key] = int(value)
            except ValueError:
                raise SpeckvError(f"long context {spec!r}: {key} must be an integer (got {value!r})") from None
        parsed = cls(mode, **values)
        parsed.check()
        return parsed

    def check(self) -> None:
        """Settings that cannot work are refused here, before any model loads."""
        if self.mode not in MODES:
            raise SpeckvError(f"unknown long-context mode {self.mode!r}; available: {', '.join(MODES)}")
        for key in ("budget", "chunk", "refresh"):
            if getattr(self, key) < 1:
                raise SpeckvError(f"long context: {key} must be at least 1 (got {getattr(self, key)})")
        if self.sinks < 0:
            raise SpeckvError(f"long context: sinks must be 0 or more (got {self.sinks})")
        if self.chunk * (RECENT_CHUNKS + 1) > self.budget:
            raise SpeckvError(f"long context: a working cache of {self.budget} tokens cannot hold "
                              f"{RECENT_CHUNKS + 1} chunks of {self.chunk} (raise budget or lower chunk)")
        if self.sinks >= self.budget:
            raise SpeckvError(f"long context: {self.sinks} sinks leave no room in a budget of {self.budget}")
        if self.read not in (None, "full", "lazy"):
            raise SpeckvError(f"long context: read must be full or lazy (got {self.read!r})")
        if self.reads == "lazy" and self.sinks < 1:
            raise SpeckvError("long context: read=lazy reads each chunk after the sinks: it needs sinks >= 1")
        if self.threshold is not None and self.threshold < 1:
            raise SpeckvError(f"long context: threshold must be positive (got {self.threshold})")
        if self.window < 0:
            raise SpeckvError(f"long context: window must be 0 or more (got {self.window})")
        if self.mode == "auto" and self.window and self.sinks >= self.window:
            raise SpeckvError(f"long context: a window of {self.window} tokens must exceed its {self.sinks} sinks (0: no window)")

    def at(self, prompt_len: int) -> LongContext:
        """The concrete spec for a prompt of this length (auto resolved; prompts that fit the
        budget keep everything)."""
        if self.mode == "auto":
            if prompt_len >= (self.threshold or 0) and prompt_len > self.budget:
                return replace(self, mode="retrieval", read=self.reads)
            if self.window and prompt_len > self.window:
                return replace(self, mode="window", budget=self.window)
            return replace(self, mode="full")
        return self if prompt_len > self.budget else replace(self, mode="full")

    def active(self, prompt_len: int) -> str:
        """The mode for a prompt of this length."""
        return self.at(prompt_len).mode

    @property
    def reads(self) -> str:
        """How retrieval reads the prompt: as asked, else SpecExtend's full read for `retrieval`
        and the lazy read for `auto` (measured: the full read costs the draft a prefill that
        64-token answers do not repay; docs/long_context.md)."""
        return self.read or ("lazy" if self.mode == "auto" else "full")

    @property
    def windowed(self) -> bool:
        """Whether the draft, once this mode is active, reads only a window of the prompt (window,
        lazy retrieval) rather than all of it (full, retrieval with the full read)."""
        return self.mode == "window" or (self.mode != "full" and self.reads == "lazy")

    def attended(self, prompt_len: int) -> int:
        """Prompt tokens the draft attends to at this length (what its per-token cost grows with)."""
        spec = self.at(prompt_len)
        return prompt_len if spec.mode == "full" else spec.budget

    def with_threshold(self, threshold: int) -> LongContext:
        return replace(self, threshold=threshold)

    def __str__(self) -> str:
        defaults = LongContext()
        opts = [f"{k}={getattr(self, k)}" for k in OPTIONS
                if getattr(self, k) != getattr(defaults, k)]
        return self.mode + (":" + ",".join(opts) if opts else "")


def auto_threshold(draft_ms, budget: int, gain: float = 1.2, longest: int = LONGEST) -> int:
    """The shortest prompt at which the draft's cost per token over the full prompt is `gain` times
    its cost over a working cache of `budget` tokens (draft_ms(ctx): the cost model's line); a
    cost model that sees no context cost never turns retrieval on."""
    short = draft_ms(budget)
    n = budget
    while n <= longest:
        if draft_ms(n) >= gain * short:
            return n
        n *= 2
    return longest + 1


class WorkingCache:
    """A draft model's sequence that attends to a bounded part of a long prompt (see above)."""

    def __init__(self, runner, spec: LongContext):
        self.runner = runner
        self.spec = spec
        self.mode = "full"  # decided when the prompt arrives
        self.work = runner.sequence()
        self.full = None  # retrieval: every accepted id read so far
        self.where: dict[int, int] | None = None  # read=lazy: true index -> entry of `full` (None: the same)
        self.synced = 0  # ids the full cache stands for (read or skipped)
        self.prompt: list[int] = []
        self.vocab = 0
        self.read_tokens = 0  # prompt tokens the draft has read (what its prefill cost)
        self.offset = 0  # true index - working index, for tail entries
        self.tail = 0  # working index where the tail starts
        self.steps = 0  # verification steps since the last selection
        self.target = None  # the target's sequence (retrieval reads its attention)
        self.selections = 0  # how many times retrieval re-chose its chunks

    def __len__(self) -> int:
        return len(self.work) + self.offset

    def follow(self, target) -> None:
        """Read relevance from this target sequence (retrieval)."""
        self.target = target

    def forward(self, tokens: list[int], rows: int, vocab: int, parents: list[int | None] | None = None) -> torch.Tensor:
        if len(self) == 0 and parents is None:
            return self._read_prompt(tokens, rows, vocab)
        if parents is None:  # (a chain: llama.cpp's sequences take no parents)
            return self.work.forward(tokens, rows, vocab)
        return self.work.forward(tokens, rows, vocab, [p if p is None else self._working(p) for p in parents])

    def compact(self, length: int, path: list[int]) -> None:
        self.work.compact(self._working(length), [self._working(p) for p in path])

    def truncate(self, length: int) -> None:
        self.work.truncate(self._working(length))

    def close(self) -> None:
        self.work.close()
        if self.full is not None:
            self.full.close()

    def _working(self, true_index: int) -> int:
        index = true_index - self.offset
        if index < self.tail:
            raise ValueError(f"id {true_index} is outside the working cache's tail (it starts at {self.tail + self.offset})")
        return index

    def _read_prompt(self, tokens: list[int], rows: int, vocab: int) -> torch.Tensor:
        self.spec = self.spec.at(len(tokens))  # this run's prompt decides (auto resolved)
        self.mode = self.spec.mode
        if self.mode == "full":
            return self.work.forward(tokens, rows, vocab)
        if self.mode == "window":  # the draft reads the sinks and the recent tokens only
            sinks, recent = self.spec.sinks, self.spec.budget - self.spec.sinks
            logits = self.work.forward(tokens[:sinks] + tokens[-recent:], rows, vocab)
            self.tail, self.offset = sinks, len(tokens) - sinks - recent
            return logits
        self.full, self.prompt, self.vocab, n = self.runner.sequence(), list(tokens), vocab, len(tokens)
        if self.spec.reads == "lazy":  # the sinks and the recent tokens now, chunks when chosen
            sinks, recent = self.spec.sinks, self.spec.budget - self.spec.sinks
            logits = self.full.forward(tokens[:sinks] + tokens[-recent:], rows, vocab)
            self.where = {**{i: i for i in range(sinks)}, **{n - recent + j: sinks + j for j in range(recent)}}
            self.read_tokens = sinks + recent
            self._select(list(range(sinks)) + list(range(n - recent, n)), n)
        else:
            logits = self.full.forward(tokens, rows, vocab)
            self.read_tokens = n
            self._select(list(range(max(0, n - self.spec.budget), n)), n)
        self.synced = n
        if self.target is not None:
            self.target.keep_queries = True
        return logits

    def commit(self) -> None:
        """A verification step is over and the cache holds exactly the accepted ids (minus the
        last): evict (window) or re-choose chunks (retrieval) when it is time."""
        self.steps += 1
        excess = len(self.work) - self.tail - (self.spec.budget - self.spec.sinks)
        if self.mode == "window" and excess > self.spec.chunk:
            if hasattr(self.work, "gather"):
                n = len(self)
                self._select(list(range(self.spec.sinks)) + list(range(n - self.spec.budget + self.spec.sinks, n)), n)
            elif hasattr(self.work, "evict") and self.work.evict(self.tail, excess):  # llama.cpp: in place
                self.offset += excess
        elif self.mode == "retrieval" and self.steps >= self.spec.refresh and self.target is not None:
            scores = self.target.last_attention()
            if scores is not None:
                self._sync_full()
                self._select(self._ranked(scores[: self.synced]), self.synced)

    def _sync_full(self) -> None:
        """Append to the full cache the tail entries it does not hold yet."""
        start = self.synced - self.offset
        if start < self.tail:
            raise AssertionError("the full cache lost track of the working cache")
        if self.where is not None:
            self.where.update((self.synced + k, len(self.full) + k) for k in range(len(self.work) - start))
        self.full.gather(self.work, list(range(start, len(self.work))))
        self.synced = len(self)

    def _read(self, indices: list[int]) -> None:
        """read=lazy: compute the draft's entries of prompt ids it has not read, in one forward:
        each run of ids a branch under the sinks (so runs do not see each other), then moved into
        the full cache."""
        missing = [i for i in indices if i not in self.where]
        if not missing:
            return
        sinks = self.spec.sinks
        scratch = self.runner.sequence()
        scratch.gather(self.full, [self.where[i] for i in range(sinks)])
        parents = [sinks - 1 if k == 0 or missing[k - 1] != i - 1 else sinks + k - 1 for k, i in enumerate(missing)]
        scratch.forward([self.prompt[i] for i in missing], 1, self.vocab, parents)
        start = len(self.full)
        self.full.gather(scratch, list(range(sinks, sinks + len(missing))))
        scratch.close()
        self.where.update((i, start + k) for k, i in enumerate(missing))
        self.read_tokens += len(missing)

    def _ranked(self, scores: torch.Tensor) -> list[int]:
        """True indices of the chunks with the highest mean attention, then the most recent ids."""
        n, chunk = len(scores), self.spec.chunk
        recent_from = max(0, n - RECENT_CHUNKS * chunk)
        keep = (self.spec.budget - (n - recent_from)) // chunk
        starts = list(range(0, recent_from, chunk))  # chunks before the recent run (the last may be cut short)
        if not starts or keep < 1:
            return list(range(recent_from, n))
        sums = torch.zeros(len(starts) * chunk)
        sums[:recent_from] = scores[:recent_from].float().cpu()
        lengths = torch.tensor([min(chunk, recent_from - s) for s in starts], dtype=torch.float32)
        means = sums.view(len(starts), chunk).sum(-1) / lengths
        picked = sorted(means.topk(min(keep, len(starts))).indices.tolist())
        return [i for c in picked for i in range(starts[c], min(starts[c] + chunk, recent_from))] + list(range(recent_from, n))

    def _select(self, indices: list[int], n: int) -> None:
        """Make the working cache these true indices (ascending, ending at id n - 1), packed."""
        source = self.full if self.mode == "retrieval" else self.work
        entries = indices
        if source is self.work:  # window: pick from the working cache itself
            entries = [self._working(i) if i >= self.tail + self.offset else i for i in indices]
        elif self.where is not None:  # read=lazy: read what is missing, then look entries up
            self._read(indices)
            entries = [self.where[i] for i in indices]
        work = self.runner.sequence()
        work.gather(source, entries)
        run = 1  # the tail: the contiguous run that ends at the newest id
        while run < len(indices) and indices[-run - 1] == indices[-run] - 1:
            run += 1
        self.work.close()
        self.work = work
        self.tail = len(indices) - run
        self.offset = n - len(work)
        self.steps = 0
        self.selections += 1
