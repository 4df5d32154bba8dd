"""HeteroSpec (arXiv 2505.13254): draft trees whose depth and size follow how predictable the
context is.

After the base depth d, the spine's cumulative top-K entropy H (the sum over its levels of the
entropy of the draft's renormalized top-10 probabilities) falls into one of 8 strata whose edges a
depth-3 regression tree learned from traces (`speckv train`: H at d levels -> accepted length).
Following the paper's rules, the three lowest-entropy strata B0..B2 get (alpha - i) more levels
(alpha = ceil(d / 2)) and a re-ranking budget of ceil(gamma_i * N) + (alpha - i) nodes
(gamma = 0.3, 0.6, 1.0): deeper, narrower trees where the draft is sure. Strata B3..B7 keep the base
shape (depth d, N nodes). Every level keeps `width` children by path probability (EAGLE-2), and the
final tree is re-ranked by path probability to the stratum's node budget.
"""

from __future__ import annotations

import bisect
import math

from speckv.control.base import Controller, RequestInfo
from speckv.records import TokenSignals

GAMMAS = (0.3, 0.6, 1.0)
FEATURES = ["spine_topk_entropy"]


class HeteroSpec(Controller):
    name = "heterospec"
    trees = True

    def __init__(self, edges: list[float], depth: int = 5, nodes: int = 16, width: int = 4,
                 gammas: tuple[float, ...] = GAMMAS):
        self.edges = sorted(edges)
        self.depth, self.nodes, self.width, self.gammas = depth, nodes, width, tuple(gammas)
        self.alpha = math.ceil(depth / 2)
        self.rerank = nodes
        self._extra = 0
        self.strata: list[int] = []  # the stratum of each step's tree (for reports)

    def start(self, request: RequestInfo) -> None:
        self.strata = []

    def budget(self) -> int:
        return self.depth + self.alpha

    def stratum(self, spine: tuple[TokenSignals, ...]) -> int:
        return bisect.bisect_right(self.edges, sum(s.topk_entropy for s in spine))

    def tree_width(self, level: int, spine: tuple[TokenSignals, ...]) -> int:
        if level == 1:
            self._extra, self.rerank = 0, self.nodes
        if level <= self.depth:
            return self.width
        if level == self.depth + 1:  # spine[:depth]: the distributions the d base levels came from
            i = self.stratum(spine[: self.depth])
            self.strata.append(i)
            if i < len(self.gammas):
                self._extra = self.alpha - i
                self.rerank = math.ceil(self.gammas[i] * self.nodes) + self._extra
        return self.width if level <= self.depth + self._extra else 0
