"""The quick cost probe: this machine's cost lines for a loaded pair in seconds, not a calibration run.

`auto` prices every draft against a target forward, and those prices differ by machine (up to 2x
here between runs of one model) and by compression (an NF4 target costs about what its draft does
on CPU). With no `speckv calibrate` for the setup, `speckv.load` times a few forwards once -- the
target at 1 and 9 new tokens after a short and a long context, the draft model at one token and over 65 (what
it pays per token it reads before drafting: a prompt, a catch-up after lookup steps), prompt
lookup on a long text -- fits the same cost lines the full calibration fits, and caches them for
the setup. Loop overhead is not probed (it needs whole runs); the probe uses a small constant.

A cached probe records its PROBE_VERSION; one made by an older probe (version 1 had no per-n
verification shape, so it priced a 16-token Q4_K_M verification at 226 ms against 151 measured
and a 2-token one at 40 against 46; version 2 timed CPU drafts with their float head, 30% dearer
than the int8 head they now draft with) is measured again rather than trusted. Costs from
`speckv calibrate` are never replaced.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from speckv.backends import Runner, as_runner
from speckv.cost import CostModel
from speckv.drafting.lookup import LookupSource
from speckv.measure.latency import forward_ms

CONTEXTS = (64, 512)
SHAPE_CONTEXT, SHAPE_TOKENS = 300, tuple(range(1, 18))  # every verification a draft of up to 16 tokens asks for
PROBE_VERSION = 5  # 2: per-n verification shape (SHAPE_TOKENS); 3: drafts with an int8 head on CPU (models/draft.py);
#                   4: what the draft pays per token it reads before drafting (CostModel.read);
#                   5: bf16 / float32 layers on our kernel where it pays on this CPU (models/cpu_linear.py)
#: the draft's read is timed over this many tokens (NF4 draft here: 1.6-2.3 ms per token from 17 to 257)
READ_TOKENS = 65
OVERHEAD_MS = (1.0, 0.0)  # per step outside forwards: what full calibrations here measured (0.6-1.4 ms)


def _line(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Non-negative least squares by clipping: the probe's designs are well conditioned."""
    return np.clip(np.linalg.lstsq(x, y, rcond=None)[0], 0, None).tolist()


def lookup_ms(tokens: int = 2000, budget: int = 16, repeats: int = 20) -> tuple[float, float]:
    """(ms per lookup step, ms per copied token) of prompt lookup on a text of `tokens` ids."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 500, tokens).tolist()
    ids += ids[-200:-180]  # a recurring tail: lookup copies
    drafter = LookupSource().new(0, None)
    t0 = time.perf_counter()
    for _ in range(repeats):
        offer = drafter.offer(ids, budget)
    per_step = (time.perf_counter() - t0) * 1000 / repeats
    return (per_step / 2, per_step / 2 / max(len(offer), 1))


def stale(path: Path) -> bool:
    """Whether the cost file at `path` should be (re)measured: missing, unreadable, or made by an
    older probe. A calibrated one is kept whatever its age."""
    try:
        meta = json.loads(Path(path).read_text()).get("meta", {})
    except (OSError, ValueError, AttributeError):
        return True
    return meta.get("calibrated") == "probe" and meta.get("probe_version", 1) < PROBE_VERSION


def probe(target: Runner, draft: Runner | None, meta: dict | None = None) -> CostModel:
    """Cost lines for this target (and draft) on this machine, from about twenty timed forwards."""
    target = as_runner(target)
    x, y = [], []
    for ctx in CONTEXTS:
        for n, ms in forward_ms(target, context=ctx, new_tokens=(1, 9), repeats=3).items():
            x.append((1.0, n, ctx / 1000, n * ctx / 1000))
            y.append(ms)
    verify = _line(np.array(x), np.array(y))
    draft_line, read = (0.0, 0.0, 0.0), 0.0
    if draft is not None:
        short = forward_ms(draft, context=CONTEXTS[0], new_tokens=(1, READ_TOKENS), repeats=4)  # one token, and a read
        per_token = {CONTEXTS[0]: short[1], CONTEXTS[1]: forward_ms(draft, context=CONTEXTS[1], new_tokens=(1,), repeats=4)[1]}
        slope = max(0.0, (per_token[CONTEXTS[1]] - per_token[CONTEXTS[0]]) / (CONTEXTS[1] - CONTEXTS[0]) * 1000)
        draft_line = (0.0, max(0.0, per_token[CONTEXTS[0]] - slope * CONTEXTS[0] / 1000), slope)
        read = max(0.0, (short[READ_TOKENS] - short[1]) / (READ_TOKENS - 1))
    prefill = (verify[0], verify[1] * 1000)  # the line at n = prompt length: pessimistic (prefill batches better)
    cost = CostModel(draft_line, tuple(verify), OVERHEAD_MS, prefill,
                     {"calibrated": "probe", "probe_version": PROBE_VERSION, "threads": target.threads, **(meta or {})}, lookup_ms(),
                     read=(read,))
    # Kernels chosen by batch size make the cost of n tokens jagged: measure every n a draft can ask for.
    return cost.with_shape(forward_ms(target, context=SHAPE_CONTEXT, new_tokens=SHAPE_TOKENS, repeats=2), SHAPE_CONTEXT)
