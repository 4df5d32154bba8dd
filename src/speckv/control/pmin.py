"""llama.cpp's draft stopping (`common/speculative.cpp`): draft up to n_max tokens (default 16)
and stop after a token whose draft probability is below p_min (default 0.75). Stateless."""

from speckv.control.base import Controller
from speckv.records import TokenSignals


class PMin(Controller):
    def __init__(self, n_max: int = 16, p_min: float = 0.75):
        self.name = f"p-min:{n_max}:{p_min:g}"
        self.n_max = n_max
        self.p_min = p_min

    def budget(self) -> int:
        return self.n_max

    def keep_drafting(self, signals: TokenSignals, drafted: int) -> bool:
        return signals.top1 >= self.p_min
