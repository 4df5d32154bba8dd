"""The cost model: what drafting, verifying and the loop itself cost on this machine.

At the bottom of the package (beside records.py): controllers price drafts with it at run time,
measurement fits it; scikit-learn is imported only to fit.

Fitted by least squares (non-negative) to live step records, so it knows what a draft token
and a verification of n tokens cost at a given context length, and the per-step loop overhead
outside the model forwards (which grows with the output: detokenization, bookkeeping) - the two
things a naive per-forward model misses. Predicts a policy's wall time from replayed steps.

A verification is a line in n plus a per-n residual (`verify_shape`): llama.cpp picks its matrix
kernels by batch size, so on this CPU a Q4_K_M forward over 16 tokens costs less than one over 15
(benchmarks/results/forward_costs.json). A line alone would price every long draft wrongly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from speckv.errors import SpeckvError
from speckv.files import write_json
from speckv.records import StepRecord

COST_VERSION = 1


@dataclass(frozen=True)
class CalibrationRun:
    """One live generation: its steps, wall time and prefill time."""

    prompt_len: int
    steps: list[StepRecord]
    wall_s: float
    prefill_ms: float


def _nonneg_fit(x: np.ndarray, y: np.ndarray) -> list[float]:
    from sklearn.linear_model import LinearRegression  # here: predicting (controllers at run time) needs no sklearn

    return LinearRegression(positive=True, fit_intercept=False).fit(x, y).coef_.tolist()


# The model's terms, written once: scalar features for prediction (plain floats: the oracle and the
# cost-aware controller call these per step), stacked into design matrices for fitting.
def _draft_x(drafted: int, ctx: int) -> tuple[float, float, float]:
    return (float(drafted > 0), float(drafted), drafted * ctx / 1000)


def _verify_x(n: int, ctx: int) -> tuple[float, float, float, float]:
    return (1.0, float(n), ctx / 1000, n * ctx / 1000)


def _dot(x: tuple[float, ...], w: tuple[float, ...]) -> float:
    return sum(a * b for a, b in zip(x, w))


@dataclass(frozen=True)
class CostModel:
    draft: tuple[float, ...]  # ms per drafting step: d0 [k>0] + d1 k + d2 k ctx/1000
    verify: tuple[float, ...]  # ms per verification of n tokens: v0 + v1 n + v2 ctx/1000 + v3 n ctx/1000
    overhead: tuple[float, ...]  # ms per step outside forwards: o0 + o1 produced/1000
    prefill: tuple[float, ...]  # ms: p0 + p1 prompt_len/1000
    meta: dict = field(default_factory=dict)  # models, compression, device, threads
    lookup: tuple[float, ...] = (0.0, 0.0)  # ms per prompt-lookup step: l0 [k>0] + l1 k
    verify_shape: tuple[float, ...] = ()  # ms added to the verify line at n = 1, 2, ... (measured residuals)
    read: tuple[float, ...] = (0.0,)  # ms per token the draft model reads before drafting (prompt, catch-up)

    def draft_ms(self, drafted: int, ctx: int) -> float:
        """The draft model's chain of `drafted` tokens."""
        return _dot(_draft_x(drafted, ctx), self.draft)

    def read_ms(self, tokens: int) -> float:
        """The draft model reading `tokens` it has not seen, in the forward of its first draft: the
        prompt the first time it drafts, then whatever other proposers got accepted meanwhile."""
        return self.read[0] * tokens

    def lookup_ms(self, drafted: int) -> float:
        return self.lookup[0] * (drafted > 0) + self.lookup[1] * drafted

    def drafter_ms(self, drafter: str, drafted: int, ctx: int, read: int = 0) -> float:
        """A step's drafting time by the proposer that drafted it (one cost line per proposer)."""
        return self.lookup_ms(drafted) if drafter == "lookup" else self.draft_ms(drafted, ctx) + self.read_ms(read)

    def verify_ms(self, n: int, ctx: int) -> float:
        shape = self.verify_shape[n - 1] if 0 < n <= len(self.verify_shape) else 0.0
        return max(0.0, _dot(_verify_x(n, ctx), self.verify) + shape)

    def with_shape(self, measured: dict[int, float], ctx: int) -> CostModel:
        """This model with the per-n residuals of forwards measured at context `ctx`."""
        top = max(measured, default=0)
        line = {n: _dot(_verify_x(n, ctx), self.verify) for n in measured}
        shape = tuple(measured[n] - line[n] if n in measured else 0.0 for n in range(1, top + 1))
        return replace(self, verify_shape=tuple(round(v, 3) for v in shape))

    def overhead_ms(self, produced: int) -> float:
        return self.overhead[0] + self.overhead[1] * produced / 1000

    def prefill_ms(self, prompt_len: int) -> float:
        return self.prefill[0] + self.prefill[1] * prompt_len / 1000

    def wall_s(self, steps: list[StepRecord], prompt_len: int) -> float:
        """Predicted wall time of a run with these steps (control time as recorded)."""
        ms = self.prefill_ms(prompt_len)
        produced = 0
        for s in steps:
            ms += self.drafter_ms(s.drafter, s.drafted, s.context_len, s.draft_read) + self.verify_ms(s.drafted + 1, s.context_len)
            ms += s.control_ms + self.overhead_ms(produced)
            produced += s.emitted
        return ms / 1000

    @classmethod
    def fit(cls, runs: list[CalibrationRun], meta: dict | None = None) -> CostModel:
        steps = [s for r in runs for s in r.steps]
        if len(runs) < 2 or not any(s.drafted for s in steps):
            raise SpeckvError("calibration needs at least two runs with drafted tokens")
        chain = [s for s in steps if s.drafter != "lookup"]  # the model's steps (and plain ones)
        *draft, read = _nonneg_fit(np.array([(*_draft_x(s.drafted, s.context_len), s.draft_read) for s in chain]),
                                   np.array([s.draft_ms for s in chain]))
        looked = [s for s in steps if s.drafter == "lookup"]
        lookup = (0.0, 0.0)
        if len(looked) >= 2:
            lookup = tuple(_nonneg_fit(np.array([(1.0, s.drafted) for s in looked]), np.array([s.draft_ms for s in looked])))
        verify = _nonneg_fit(np.array([_verify_x(s.drafted + 1, s.context_len) for s in steps]),
                             np.array([s.verify_ms for s in steps]))
        residual: dict[int, list[float]] = {}
        for s in steps:
            residual.setdefault(s.drafted + 1, []).append(s.verify_ms - _dot(_verify_x(s.drafted + 1, s.context_len), verify))
        shape = tuple(float(np.median(residual[n])) if len(residual.get(n, ())) >= 3 else 0.0
                      for n in range(1, max(residual) + 1))
        # Per run: residual = wall - prefill - forwards - control = o0 * steps + o1 * sum(produced)/1000
        x, y = [], []
        for r in runs:
            produced = np.cumsum([0] + [s.emitted for s in r.steps[:-1]])
            x.append([len(r.steps), produced.sum() / 1000])
            y.append(r.wall_s * 1000 - r.prefill_ms - sum(s.draft_ms + s.verify_ms + s.control_ms for s in r.steps))
        overhead = _nonneg_fit(np.array(x), np.array(y))
        lens = np.array([r.prompt_len for r in runs], float) / 1000
        prefill = _nonneg_fit(np.stack([np.ones_like(lens), lens], -1), np.array([r.prefill_ms for r in runs]))
        return cls(tuple(draft), tuple(verify), tuple(overhead), tuple(prefill), dict(meta or {}), lookup, shape, (read,))

    def to_dict(self) -> dict:
        return {"version": COST_VERSION, **asdict(self)}

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "cost model") -> CostModel:
        if data.get("version") != COST_VERSION:
            raise SpeckvError(f"{source}: cost model version {data.get('version')} (this speckv reads {COST_VERSION})")
        try:
            return cls(*(tuple(data[k]) for k in ("draft", "verify", "overhead", "prefill")), data.get("meta", {}),
                       tuple(data.get("lookup", (0.0, 0.0))), tuple(data.get("verify_shape", ())),
                       tuple(data.get("read", (0.0,))))
        except (KeyError, TypeError):
            raise SpeckvError(f"{source}: malformed cost model") from None

    @classmethod
    def load(cls, path: Path) -> CostModel:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SpeckvError(f"{path}: cannot read cost model ({type(exc).__name__})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def ratio(cls, draft_per_target: float = 0.5, target_ms: float = 200.0) -> CostModel:
        """An uncalibrated default from the one ratio that matters (draft token vs target forward)."""
        return cls((0.0, draft_per_target * target_ms, 0.0), (target_ms, 0.0, 0.0, 0.0), (0.0, 0.0), (0.0, 0.0),
                   {"calibrated": False})
