"""The decoding engine: loop, acceptance rules, KV cache rollback."""

from speckv.engine.decode import Engine, StepEvent
from speckv.engine.sampling import SamplingConfig, Verdict, accept_greedy, accept_speculative

__all__ = ["Engine", "SamplingConfig", "StepEvent", "Verdict", "accept_greedy", "accept_speculative"]
