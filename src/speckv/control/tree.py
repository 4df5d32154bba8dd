"""A fixed tree shape: `tree:depth=D,nodes=N[,width=W][,rerank|spine]`.

Each level keeps the W children with the highest path probability (fewer where the node budget
must still cover the levels below: one node each), until depth D or N nodes; with
`rerank`, every child seen competes for the N nodes at the end (EAGLE-2); with `spine`, only the
most probable child grows and each level adds its W - 1 runners-up as leaves (replayable). The baseline the
adaptive tree policies are measured against, and the one whose shape replay reproduces exactly.
"""

from speckv.control.base import Controller, RequestInfo
from speckv.records import TokenSignals


class FixedTree(Controller):
    trees = True

    def __init__(self, depth: int, nodes: int, width: int, rerank: bool = False, spine: bool = False):
        self.depth, self.nodes, self.width, self.spine = depth, nodes, width, spine
        self.rerank = nodes if rerank else 0
        self.name = f"tree:depth={depth},nodes={nodes},width={width}" + (",rerank" if rerank else "") + (",spine" if spine else "")
        self._used = 0

    def start(self, request: RequestInfo) -> None:
        self._used = 0

    def budget(self) -> int:
        return self.depth

    def tree_width(self, level: int, spine: tuple[TokenSignals, ...]) -> int:
        if level == 1:
            self._used = 0
        if self.rerank:  # the beam only feeds the re-ranking: it may see more than N nodes
            return self.width
        # keep one node for each level still to come, so the tree reaches its depth within N nodes
        width = max(0, min(self.width, self.nodes - self._used - (self.depth - level)))
        self._used += width
        return width
