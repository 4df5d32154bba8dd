"""Incremental detokenization (issue 13): speckv.detok.Detokenizer decodes a few tokens per step,
and Decoder._step built on it gives exactly the pieces, text, stop cut and token ids of the old
step that re-decoded the whole output every step (kept below as `old_step`)."""

from __future__ import annotations

import contextlib
import itertools
import random
import types

import pytest

from conftest import CharTokenizer, tiny_decoder
from speckv.api import Decoder, _held_back, _Run
from speckv.detok import Detokenizer

TEXTS = [
    "héllo wörld, naïve café — señor Ångström",
    "世界你好，日本語のテキスト。한국어 문장",
    "🎉 party 👩‍👩‍👧 family 😀😃 ok 🇫🇷",
    "def f(x):\n    if x:\n        return x  # done\n\n\treturn None\n",
    "  leading spaces\n\n   and   runs of    spaces\t\ttabs",
    "∑∫ √2 ≈ 1.414, €£¥ ±∞",
]


def decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoTokenizer

    from speckv.models import pull

    return AutoTokenizer.from_pretrained(str(pull("smollm2-135m-instruct")))


@pytest.fixture(scope="module")
def qwen():
    """Only where the Qwen models are provisioned (tests/test_qwen.py pulls them)."""
    from transformers import AutoTokenizer

    from speckv.models import model_path

    path = model_path("qwen2.5-coder-0.5b-instruct")
    if not (path / "tokenizer.json").exists():
        pytest.skip("Qwen tokenizer not provisioned")
    return AutoTokenizer.from_pretrained(str(path))


#: SentencePiece-style pieces for a 64-id vocabulary (the tiny models' size): "▁" is a space, and
#: characters outside the pieces are byte-fallback tokens
SP_SMALL = (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in b"\n\xc3\xa9\xe4\xb8\x96\xf0\x9f\x8e\x89"]
            + ["▁", "▁▁", "▁the", "▁def", "▁x", "▁hello", "▁world", "er", "in", "▁in", "ing", "(", ")", ":", "=", ".", ","]
            + list("abcdefghijklmnopqrstuvwxyz01234567"))


def sentencepiece_tokenizer(pieces: list[str] | None = None, clean_up: bool = False):
    """A Llama-style tokenizer (Metaspace "▁", byte fallback, a decoder that strips the leading
    space of whatever it decodes): decoding a suffix differs from the suffix of a full decode."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    if pieces is None:  # every byte, ASCII and some words
        pieces = (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
                  + [c for c in map(chr, range(33, 127))]
                  + ["▁", "▁▁", "▁▁▁▁", "▁the", "▁def", "▁return", "▁x", "▁hello", "▁world", "▁if", "er", "in", "ing"])
    scored = [(p, 0.0 if p.startswith("<") else -5.0 if len(p) == 1 else -2.0) for p in pieces]
    tok = Tokenizer(models.Unigram(scored, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=clean_up)


class ByteTokenizer:
    """Byte-level BPE in miniature (64 ids): pieces are bytes, some only parts of a character,
    decoded like transformers' byte-level decoders (invalid or incomplete UTF-8 -> "\ufffd")."""

    chat_template = None
    eos_token_id = None
    SPECIAL = {0: b"<|end|>", 1: b"<|im_start|>"}
    PIECES = [b"<|end|>", b"<|im_start|>", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xe4", b"\xb8\x96", b"\xe4\xb8", b"\x96",
              b"\xe7\x95\x8c", b"\xf0\x9f", b"\x8e\x89", b"\xf0", b"\x9f\x8e\x89", b" \xf0\x9f", b" \xe4", b" ", b"  ",
              b"    ", b"\n", b"\n\n", b" the", b" def", b" x", b"(", b")", b":", b"=", b".", b","] + \
             [bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz012345"] + [b"\x80", b"\xff"]

    def get_vocab(self) -> dict[str, int]:
        return {repr(p): i for i, p in enumerate(self.PIECES)}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return b"".join(self.PIECES[i] for i in ids if not (skip_special_tokens and i in self.SPECIAL)).decode(
            "utf-8", "replace")


@pytest.fixture(scope="module")
def sp():
    return sentencepiece_tokenizer()


def test_toy_tokenizers_are_what_they_claim():
    assert len(ByteTokenizer.PIECES) == len(SP_SMALL) == 64
    sp = sentencepiece_tokenizer()
    ids = sp("hello world", add_special_tokens=False)["input_ids"]
    assert decode(sp, ids) == "hello world" and decode(sp, ids[1:]) == "world"  # suffix loses its space
    bytes_ = sp("世", add_special_tokens=False)["input_ids"][-3:]  # byte fallback: <0xE4> <0xB8> <0x96>
    assert decode(sp, bytes_) == "世" and decode(sp, bytes_[:2]) == "\ufffd\ufffd"


# ---------------------------------------------------------------- the Detokenizer on its own


class NoContext(Detokenizer):
    """Broken on purpose: decodes only the new tokens (no context window before them)."""

    def _commit(self) -> str:
        piece = super()._commit()
        self.prefix, self._context = self.read, ""
        return piece


class NoWait(Detokenizer):
    """Broken on purpose: commits text even when it ends in an incomplete character."""

    def _pending(self, tail: str) -> str:
        self.tail = tail
        return self._commit() if tail else ""


def sequences(tok, rng: random.Random, n: int, random_ids: bool = True) -> list[list[int]]:
    """Token ids of multi-byte text, code and runs of spaces, with special tokens inserted; every
    fourth sequence random ids (byte soup: characters split anywhere, invalid UTF-8)."""
    out = []
    for j in range(n):
        if random_ids and j % 4 == 3:
            out.append([rng.randrange(len(tok)) for _ in range(40)])
            continue
        text = rng.choice(TEXTS) + rng.choice(["", " ", "\n", "  "]) + rng.choice(TEXTS)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        for _ in range(rng.randint(0, 3)):
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(tok.all_special_ids))
        out.append(ids)
    return out


def violations(tok, seqs: list[list[int]], cls: type[Detokenizer] = Detokenizer, seed: int = 0,
               pieces_too: bool = True) -> list[tuple[str, list[int]]]:
    """Feed each sequence in random chunks of 1..5 ids. Violations: the pieces (flush included)
    do not add up to the full decode, or a piece would have to be retracted (it is no prefix of
    the full decode); after some step `text` differs from a full decode; `text_len` differs."""
    rng = random.Random(seed)
    out = []
    for ids in seqs:
        full = decode(tok, ids)
        det, pieces, i = cls(tok), [], 0
        while i < len(ids):
            k = rng.randint(1, 5)
            pieces.append(det.add(ids[i:i + k]))
            i += k
            if det.text != decode(tok, ids[:i]):
                out.append(("text", ids))
                break
            if pieces_too and not full.startswith("".join(pieces)):
                out.append(("retracted", ids))
                break
        pieces.append(det.flush())
        if pieces_too and "".join(pieces) != full:
            out.append(("pieces", ids))
        if any(det.text_len(n) != len(decode(tok, ids[:n])) for n in range(len(ids) + 1)):
            out.append(("text_len", ids))
    return out


def splits_characters(tok, seqs) -> bool:
    """Some token alone decodes to part of a character: the sequences test incomplete UTF-8."""
    return any("\ufffd" in tok.decode([i]) for ids in seqs for i in ids)


def test_smollm2_random_chunkings(smol):
    seqs = sequences(smol, random.Random(1), 120)
    assert splits_characters(smol, seqs)
    assert violations(smol, seqs) == []


def test_qwen_random_chunkings(qwen):
    seqs = sequences(qwen, random.Random(2), 24)
    assert splits_characters(qwen, seqs)
    assert violations(qwen, seqs) == []


def test_sentencepiece_random_chunkings(sp):
    """Text pieces exact on real text. On random byte-fallback soup a decode can rewrite text that
    is already final (an invalid byte turns the valid bytes before it into "\ufffd"): pieces cannot
    be retracted there, but `text` and `text_len`, which the Decoder uses, stay exact."""
    rng = random.Random(3)
    text_seqs = sequences(sp, rng, 80, random_ids=False)
    assert splits_characters(sp, text_seqs)
    assert violations(sp, text_seqs) == []
    soup = [[rng.randrange(len(sp)) for _ in range(40)] for _ in range(40)]
    assert violations(sp, soup, pieces_too=False) == []


def test_without_context_window_sentencepiece_breaks(sp, smol):
    """Decoding only the new tokens loses SentencePiece's leading spaces ("hello" "world")."""
    seqs = sequences(sp, random.Random(3), 80, random_ids=False)
    assert violations(sp, seqs, NoContext)
    hello, world = sp("hello world", add_special_tokens=False)["input_ids"]
    broken = NoContext(sp)
    assert broken.add([hello]) + broken.add([world]) == "helloworld"
    right = Detokenizer(sp)
    assert right.add([hello]) + right.add([world]) == "hello world"


def test_without_waiting_for_whole_characters_byte_level_breaks(smol, sp):
    """Committing text that ends in "\ufffd" puts the next window's start inside a character."""
    for tok in (smol, sp):
        assert violations(tok, sequences(tok, random.Random(4), 40, random_ids=False), NoWait)
    ids = smol("🎉", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    broken, right = NoWait(smol), Detokenizer(smol)
    assert "".join(broken.add([i]) for i in ids) + broken.flush() != "🎉"
    assert "".join(right.add([i]) for i in ids) + right.flush() == "🎉"


def test_tokenizer_that_cleans_up_spaces_decodes_in_full(smol):
    """clean_up_tokenization_spaces rewrites " ." to "." across any number of tokens: a window
    would miss it, so every step decodes everything (as before) and `text` stays exact. transformers
    ignores the flag for BPE models (SmolLM2): those keep decoding a window."""
    from transformers import AutoTokenizer

    tok = sentencepiece_tokenizer(clean_up=True)
    ids = tok("a  . b , c 's x n't", add_special_tokens=False)["input_ids"]
    assert decode(tok, ids) != decode(sentencepiece_tokenizer(), ids)  # it does clean up
    det = Detokenizer(tok)
    assert det.full
    for i in range(len(ids)):
        det.add(ids[i:i + 1])
        assert det.text == decode(tok, ids[:i + 1])
    assert violations(tok, sequences(tok, random.Random(5), 12) + [ids], pieces_too=False) == []
    bpe = AutoTokenizer.from_pretrained(smol.name_or_path, clean_up_tokenization_spaces=True)
    assert bpe.clean_up_tokenization_spaces and not Detokenizer(bpe).full


# ---------------------------------------------------------------- cost


class Counting:
    """Wraps a tokenizer; counts decode calls and the ids they decode."""

    def __init__(self, tok):
        self.tok, self.calls, self.ids, self.widest = tok, 0, 0, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def decode(self, ids, skip_special_tokens=False):
        self.calls += 1
        self.ids += len(ids)
        self.widest = max(self.widest, len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_decode_calls_per_step_are_bounded(smol):
    """At most two decodes per step, over a window that does not grow with the output: ids
    decoded per step are the same over 128 and over 1024 tokens."""
    text = "".join(TEXTS) * 8
    ids = smol(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1024
    per_step = {}
    for n in (128, 1024):
        tok = Counting(smol)
        det, rng, i, steps = Detokenizer(tok), random.Random(6), 0, 0
        while i < n:
            before = tok.calls
            k = rng.randint(1, 5)
            det.add(ids[i:min(i + k, n)])
            i, steps = i + k, steps + 1
            assert tok.calls - before <= 2
        assert det.final + det.flush() == decode(smol, ids[:n])
        assert tok.widest <= 40  # the last commit's ids, a chunk, a character split over chunks
        per_step[n] = tok.ids / steps
    assert per_step[1024] < 1.5 * per_step[128] < 30


def events_for(ids: list[int], rng: random.Random, finished: str = "length") -> list:
    """Engine steps as Decoder._step sees them: 1..5 tokens each, the last one finished."""
    out, i = [], 0
    while i < len(ids):
        k = rng.randint(1, 5)
        out.append(types.SimpleNamespace(tokens=ids[i:i + k], record=None, prefill_ms=0.0, draft_prefill_ms=0.0,
                                         finished=finished if i + k >= len(ids) else None))
        i += k
    return out


def test_decoder_step_decodes_a_window_not_the_output(smol):
    """The old step decoded every prefix (ids per step grow with the output); the new one decodes
    a few ids per step at any length, with the same output."""
    ids = smol("".join(TEXTS) * 4, add_special_tokens=False)["input_ids"][:512]
    per_step = {}
    for n in (128, 512):
        events = events_for(ids[:n], random.Random(7))
        old_tok, new_tok = Counting(smol), Counting(smol)
        assert replay(Decoder._step, new_tok, events, ["\x00"]) == replay(old_step, old_tok, events, ["\x00"])
        assert new_tok.calls <= 2 * len(events)
        per_step[n] = (old_tok.ids / len(events), new_tok.ids / len(events))
    (old128, new128), (old512, new512) = per_step[128], per_step[512]
    assert old512 > 3 * old128 and old128 > 4 * new128
    assert new512 < 1.5 * new128


# ---------------------------------------------------------------- the Decoder: same output as before


def old_step(self, events, run, stops):
    """Decoder._step before incremental detokenization (verbatim): the reference."""
    event = next(events, None)
    if event is None:
        return "", True
    run.prefill_ms += event.prefill_ms
    run.steps.append(event.record)
    run.token_ids += event.tokens
    if event.finished:
        run.finish_reason = event.finished
    run.text = self.tokenizer.decode(run.token_ids, skip_special_tokens=True)
    cut = min((i for s in stops if (i := run.text.find(s)) >= 0), default=-1)
    if cut >= 0:
        run.text, run.finish_reason = run.text[:cut], "stop"
        while run.token_ids and len(self.tokenizer.decode(run.token_ids[:-1], skip_special_tokens=True)) >= cut:
            run.token_ids.pop()
        events.close()
        return run.text[run.emitted:], True
    safe = len(run.text) - _held_back(run.text, stops)
    if run.text[:safe].endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
        safe -= 1
    if event.finished:
        safe = len(run.text)
    piece = ""
    if safe > run.emitted:
        piece = run.text[run.emitted:safe]
        run.emitted = safe
    return piece, bool(event.finished)


def replay(step, tok, events: list, stops: list[str]) -> tuple:
    """Drive one step function over recorded engine events, as Decoder._run does: (pieces, text,
    token ids, finish reason, events consumed)."""
    run = _Run([])
    run.detok = Detokenizer(tok)
    consumed = []

    def engine():
        for e in events:
            consumed.append(e)
            yield e

    it, pieces, holder = engine(), [], types.SimpleNamespace(tokenizer=tok)
    while True:
        piece, done = step(holder, it, run, stops)
        if piece:
            pieces.append(piece)
        if done:
            break
    return pieces, run.text, run.token_ids, run.finish_reason, len(consumed)


def stop_sets(text: str, rng: random.Random, n: int = 8) -> list[list[str]]:
    """Stop strings that occur (anywhere, the very start included, spanning tokens), that never
    occur but whose start does (held back until the end), several at once, and none."""
    sets = [[], [text[:1]], ["\x00never"]]
    for _ in range(n):
        i = rng.randrange(len(text))
        sets.append([text[i:i + rng.randint(1, 5)]])
        j = rng.randrange(len(text))
        sets.append([text[j:j + 3] + "\x00", text[i:i + 2] + "\x01"])  # prefixes only
        sets.append([text[j:j + rng.randint(1, 3)], text[i:i + rng.randint(2, 6)]])
    return [s for s in sets if all(s)]


def compare(tok, events: list, rng: random.Random) -> tuple[int, int]:
    """New vs old step over all stop sets; returns (runs cut by a stop, runs compared)."""
    text = decode(tok, [t for e in events for t in e.tokens])
    cut = n = 0
    for stops in stop_sets(text, rng):
        old = replay(old_step, tok, events, stops)
        new = replay(Decoder._step, tok, events, stops)
        assert new == old, (stops, text)
        cut += new[3] == "stop"
        n += 1
    return cut, n


@contextlib.contextmanager
def one_torch_thread():
    """The tiny models run 100x slower on two torch threads while other processes load the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_events(tiny_pair):
    """Engine events of real runs of the tiny models: greedy and sampled, 40 tokens each."""
    dec = tiny_decoder(tiny_pair)
    recorded = []
    with one_torch_thread():
        _record(dec, recorded)
    return recorded


def _record(dec, recorded: list) -> None:
    for k, prompt in enumerate([[5, 9, 2], [40, 41, 42, 43], [1, 62, 63, 0, 7], [30], [12, 12, 12, 3], [63, 2]]):
        for sampling in ({}, dict(do_sample=True, temperature=1.5, seed=k)):
            got = []
            run = dec.engine.run

            def tee(*args, _run=run, _got=got, **kwargs):
                for event in _run(*args, **kwargs):
                    _got.append(event)
                    yield event

            dec.engine.run = tee
            try:
                dec.generate(prompt, max_new_tokens=40, **sampling)
            finally:
                del dec.engine.run
            recorded.append(got)


@pytest.mark.parametrize("kind", ["char", "byte-level", "sentencepiece"])
def test_decoder_step_equals_full_decode_step_on_tiny_model_runs(kind, tiny_events):
    """Pieces, text, stop cut, trimmed token ids, finish reason and engine steps consumed are the
    old step's, for the tiny models' outputs read through three kinds of tokenizer."""
    tok = {"char": CharTokenizer, "byte-level": ByteTokenizer,
           "sentencepiece": lambda: sentencepiece_tokenizer(SP_SMALL)}[kind]()
    rng = random.Random(8)
    cut = total = 0
    for events in tiny_events:
        c, n = compare(tok, events, rng)
        cut, total = cut + c, total + n
    assert total >= 300 and cut > total // 3


def test_decoder_step_equals_full_decode_step_on_real_tokenizer(smol, sp):
    rng = random.Random(9)
    cut = 0
    for tok in (smol, sp):
        for ids in sequences(tok, rng, 16):
            c, _ = compare(tok, events_for(ids, rng, rng.choice(["length", "eos"])), rng)
            cut += c
    assert cut > 100


def test_decoder_generate_and_stream_match_the_old_decoder(tiny_pair):
    """End to end through Decoder._run: stream pieces and Result as with the old step."""
    with one_torch_thread():
        _end_to_end(tiny_pair)


def _end_to_end(tiny_pair) -> None:
    new, old = tiny_decoder(tiny_pair), tiny_decoder(tiny_pair)
    old._step = types.MethodType(old_step, old)
    rng, finished = random.Random(10), set()
    for prompt, sampling in itertools.product(["The quick brown fox", "Zebra\nline", "abc", "Speculate 42"],
                                              ({}, dict(do_sample=True, temperature=1.5, seed=3))):
        text = old.generate(prompt, max_new_tokens=32, **sampling).text
        i, j = rng.sample(range(4, len(text) - 4), 2)
        for stops in ([], [text[i:i + 3]], [text[j:j + 2] + "#", text[i + 1:i + 2]], [text[j:j + 3] + "#"]):
            runs = []
            for dec in (new, old):
                stream = dec.stream(prompt, max_new_tokens=32, stop=stops, **sampling)
                pieces = list(stream)
                r = stream.result()
                runs.append((pieces, r.text, r.token_ids, r.finish_reason, len(r.steps)))
            assert runs[0] == runs[1], stops
            finished.add(runs[0][3])
    assert finished == {"stop", "length"}
