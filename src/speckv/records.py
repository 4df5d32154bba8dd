"""Per-step and per-request records. Cheap to collect: plain floats, no tensors kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True, frozen=True)
class TokenSignals:
    """What the proposer knew about one token it proposed: a draft model's untempered softmax, or
    prompt lookup's distribution of next tokens over the matched n-gram's occurrences."""

    entropy: float  # nats
    top1: float  # probability of the most likely token
    margin: float  # top-1 minus top-2 probability
    match_len: int = 0  # prompt lookup: tokens matched before the copy point (0: a model's proposal)
    topk_entropy: float = 0.0  # a model's: entropy (nats) of its top-10 probabilities renormalized (HeteroSpec)


@dataclass(slots=True)
class StepRecord:
    step: int
    context_len: int  # tokens before this step's drafts
    budget: int  # the controller's gamma for this step
    drafted: int  # tokens actually drafted (<= budget: per-token stopping, EOS, limits)
    accepted: int  # drafted tokens the target accepted
    emitted: int  # tokens appended this step (accepted + correction/bonus, after truncation)
    signals: list[TokenSignals] = field(default_factory=list)
    draft_ms: float = 0.0  # draft forwards and sampling
    verify_ms: float = 0.0  # the target's single verification forward
    control_ms: float = 0.0  # time spent inside controller calls
    drafter: str = ""  # which proposer drafted this step: "model", "lookup" ("": none)
    tree_depth: int = 0  # tree steps: levels of the draft tree (`drafted` counts its nodes); 0: a chain
    draft_read: int = 0  # tokens the draft model read before drafting (the prompt, then what lookup got accepted)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Stats:
    new_tokens: int
    steps: int
    mean_accepted: float  # drafted tokens accepted per step
    tokens_per_step: float
    wall_s: float
    tokens_per_s: float
    prefill_ms: float
    draft_ms: float
    verify_ms: float
    control_ms: float
    overhead_frac: float  # share of wall time outside draft/target forwards and controller calls
    draft_prefill_ms: float = 0.0  # the draft's share of prefill_ms

    @property
    def decode_s(self) -> float:
        """Seconds after the target read the prompt: what "decode tokens/s" divides by (llama.cpp
        reports its speed so). The draft's reading of the prompt stays in, charged to decoding."""
        return self.wall_s - (self.prefill_ms - self.draft_prefill_ms) / 1000

    @classmethod
    def from_steps(cls, steps: list[StepRecord], new_tokens: int, wall_s: float, prefill_ms: float,
                   draft_prefill_ms: float = 0.0) -> Stats:
        n = max(len(steps), 1)
        draft = sum(s.draft_ms for s in steps)
        verify = sum(s.verify_ms for s in steps)
        control = sum(s.control_ms for s in steps)
        busy_s = (draft + verify + control + prefill_ms) / 1000
        return cls(
            new_tokens=new_tokens,
            steps=len(steps),
            mean_accepted=sum(s.accepted for s in steps) / n,
            tokens_per_step=new_tokens / n,
            wall_s=wall_s,
            tokens_per_s=new_tokens / wall_s if wall_s > 0 else 0.0,
            prefill_ms=prefill_ms,
            draft_ms=draft,
            verify_ms=verify,
            control_ms=control,
            overhead_frac=max(0.0, 1 - busy_s / wall_s) if wall_s > 0 else 0.0,
            draft_prefill_ms=draft_prefill_ms,
        )

    def to_dict(self) -> dict:
        return asdict(self)
