"""Token trees: the draft grows one level per forward over the whole frontier; the target
verifies every node in one forward with a tree attention mask.

Invariants:
- Nodes are stored level by level, so a node's parent always comes before it; `parents[i] == -1`
  means the root (the last accepted token). Siblings are distinct tokens, best draft rank first.
- `grow` is the one tree loop: live drafting and replay both run it, each with its own `expand`
  (a draft model's forward over the frontier; a trace's recorded rows), so they cannot drift.
- Level widths come from the controller (`Controller.tree_width`), asked once per level with the
  spine's signals (the spine: the most probable path so far; its last entry describes the draft
  distribution this level would be drawn from), so a policy can deepen a predictable tree or stop
  an unpredictable one mid-step; the node budget is the controller's to keep.
- Shapes: beam (default): each level keeps the `width` children of the frontier with the highest
  path probability, and the kept nodes form the next frontier. Re-ranking (EAGLE-2, `rerank = N`):
  the same beam, then every child seen competes for N nodes by path probability (ancestor-closed:
  a child's path probability never exceeds its parent's). Spine (`spine = True`): only the most
  probable child is expanded; each level adds its width - 1 runners-up as leaves. Only the spine
  shape replays from traces (beams rank off-path children, whose draft rows a trace does not hold).
- Draft probabilities are kept per node for ranking and signals only: speculative sampling treats
  candidates as deterministic (engine.sampling.accept_tree_speculative), exact for any tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from speckv.control.base import Controller
from speckv.records import TokenSignals

TOP = 16  # draft candidates kept per expanded node: the widest level a controller may ask for


@dataclass
class Tree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # -1: the root
    logp: list[float] = field(default_factory=list)  # draft log probability of the path to the node
    signals: list[TokenSignals] = field(default_factory=list)  # of the distribution the node was drawn from
    spine: list[int] = field(default_factory=list)  # the most probable path, node by node

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int, logp: float, signals: TokenSignals) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.logp.append(logp)
        self.signals.append(signals)
        return len(self.tokens) - 1

    def depth_of(self, node: int) -> int:
        d = 0
        while node >= 0:
            node, d = self.parents[node], d + 1
        return d

    def depth(self) -> int:
        return max((self.depth_of(n) for n in range(len(self))), default=0)

    def subset(self, keep: list[int]) -> tuple[Tree, dict[int, int]]:
        """The tree of the nodes in `keep` (ancestor-closed), renumbered in level order, and the
        renumbering."""
        order = sorted(keep)
        new = {old: i for i, old in enumerate(order)}
        out = Tree()
        for old in order:
            p = self.parents[old]
            out.add(self.tokens[old], -1 if p < 0 else new[p], self.logp[old], self.signals[old])
        out.spine = [new[n] for n in self.spine if n in new]
        return out, new


@dataclass(frozen=True)
class Row:
    """What expanding one node yields: the signals of its draft distribution and its best tokens
    (best first) with their log probabilities."""

    signals: TokenSignals
    tokens: list[int]
    logp: list[float]


def rows_from_logits(logits: torch.Tensor, signals_of: Callable[[torch.Tensor], list[TokenSignals]]) -> list[Row]:
    top = torch.log_softmax(logits.float(), dim=-1).topk(min(TOP, logits.shape[-1]), dim=-1)
    return [Row(s, t, lp) for s, t, lp in zip(signals_of(logits), top.indices.tolist(), top.values.tolist())]


#: expand(frontier nodes, the tree so far) -> one Row per node (frontier [-1]: the root)
Expand = Callable[[list[int], Tree], list[Row]]


def grow(expand: Expand, controller: Controller, max_depth: int, stop_ids: frozenset[int]) -> tuple[Tree, dict[int, int]]:
    """Grow a tree to at most `max_depth` levels, asking the controller for each level's width
    (0 stops). Returns the tree and the renumbering of the nodes `expand` saw into its nodes."""
    seen = Tree()  # every child considered (re-ranking picks from these)
    kept: list[int] = []
    frontier = [-1]
    rows = expand(frontier, seen)
    spine: list[TokenSignals] = []
    for level in range(1, max_depth + 1):
        width = min(controller.tree_width(level, (*spine, rows[0].signals)), TOP)
        if width <= 0:
            break
        parents = frontier[:1] if controller.spine else frontier
        candidates = []
        for parent, row in zip(parents, rows):
            base = seen.logp[parent] if parent >= 0 else 0.0
            for tok, lp in zip(row.tokens[:width], row.logp[:width]):
                candidates.append((base + lp, seen.add(tok, parent, base + lp, row.signals)))
        candidates.sort(key=lambda c: -c[0])
        chosen = [node for _, node in (candidates if controller.spine else candidates[:width])]
        kept += chosen
        best = chosen[0]
        spine.append(seen.signals[best])
        seen.spine.append(best)
        frontier = [best] if controller.spine else chosen
        frontier = [n for n in frontier if seen.tokens[n] not in stop_ids]
        if level == max_depth or not frontier:
            break
        rows = expand(frontier, seen)
    if controller.rerank and kept:
        order = sorted(range(len(seen)), key=lambda n: (-seen.logp[n], n))[: controller.rerank]
        kept = _closed(seen, order)
    return seen.subset(kept)


def _closed(tree: Tree, nodes: list[int]) -> list[int]:
    """`nodes` plus any missing ancestors (ties in path probability can leave one out)."""
    out = set(nodes)
    for n in nodes:
        p = tree.parents[n]
        while p >= 0 and p not in out:
            out.add(p)
            p = tree.parents[p]
    return sorted(out)
