"""Token trees: the draft model grows one level per forward over the whole frontier; the target
verifies every node in one forward with a tree attention mask.

Invariants:
- Nodes are stored level by level, so a node's parent always comes before it; `parents[i] == -1`
  means the root (the last accepted token). Siblings are distinct tokens, best draft rank first.
- Level widths come from the controller (`Controller.tree_width`), asked once per level with the
  spine's signals (the spine: the most probable path so far; its last entry describes the draft
  distribution this level would be drawn from), so a policy can deepen a predictable tree or stop
  an unpredictable one mid-step; the node budget is the controller's to keep.
- Beam growth (default): each level keeps the `width` children of the previous level with the
  highest path probability, and only kept nodes are verified. Re-ranking (EAGLE-2): the same beam
  is grown but every child it saw competes for the node budget by path probability at the end
  (ancestor-closed: a child's path probability never exceeds its parent's). Re-ranking depends on
  off-path children, so only beam trees replay from traces.
- Draft probabilities are kept per node for signals only: speculative sampling treats candidates
  as deterministic (engine.sampling.accept_tree_speculative), which keeps it exact for any tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from speckv.control.base import Controller
from speckv.records import TokenSignals


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

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]

    def depth(self) -> int:
        depths: list[int] = []
        for p in self.parents:
            depths.append(1 if p < 0 else depths[p] + 1)
        return max(depths, default=0)

    def subset(self, keep: list[int]) -> Tree:
        """The tree of the nodes in `keep` (ancestor-closed), renumbered in level order."""
        order = sorted(keep)
        new = {old: i for i, old in enumerate(order)}
        out = Tree()
        for old in order:
            p = self.parents[old]
            out.add(self.tokens[old], -1 if p < 0 else new[p], self.logp[old], self.signals[old])
        out.spine = [new[n] for n in self.spine if n in new]
        return out


@dataclass
class Grown:
    tree: Tree
    cache_index: dict[int, int]  # node -> its entry in the draft cache (nodes the draft forwarded)


def grow(root_logits: torch.Tensor, forward: Callable[[list[int], list[int]], torch.Tensor], base: int,
         controller: Controller, max_depth: int, rerank: int, signals_of: Callable[[torch.Tensor], list[TokenSignals]],
         stop_ids: frozenset[int]) -> Grown:
    """Grow a tree from the root's draft logits. `forward(tokens, parent_cache_indices)` runs the
    draft over one level and returns its logits; `base` is the draft cache's length (the root is
    entry base - 1). Stops at `max_depth`, when the controller answers width 0, or when every
    frontier node is a stop id."""
    seen = Tree()  # every child considered (re-ranking picks from these)
    kept: list[int] = []
    cache_index: dict[int, int] = {}
    frontier, logits = [-1], root_logits[None]
    spine: list[TokenSignals] = []
    level = 0
    while level < max_depth:
        level += 1
        sig = signals_of(logits)  # row 0: the spine's end (the frontier is sorted by path probability)
        width = controller.tree_width(level, (*spine, sig[0]))
        if width <= 0:
            break
        logp = torch.log_softmax(logits.float(), dim=-1)
        top = logp.topk(width, dim=-1)
        candidates = []
        for row, parent in enumerate(frontier):
            base_lp = seen.logp[parent] if parent >= 0 else 0.0
            for lp, tok in zip(top.values[row].tolist(), top.indices[row].tolist()):
                candidates.append((base_lp + lp, seen.add(tok, parent, base_lp + lp, sig[row])))
        candidates.sort(key=lambda c: -c[0])
        frontier = [node for _, node in candidates[:width]]
        kept += frontier
        spine.append(seen.signals[frontier[0]])
        seen.spine.append(frontier[0])
        frontier = [n for n in frontier if seen.tokens[n] not in stop_ids]
        if level == max_depth or not frontier:
            break
        start = base + len(cache_index)
        parents = [cache_index[seen.parents[n]] if seen.parents[n] >= 0 else base - 1 for n in frontier]
        logits = forward([seen.tokens[n] for n in frontier], parents)
        for i, n in enumerate(frontier):
            cache_index[n] = start + i
    if rerank and kept:
        order = sorted(range(len(seen)), key=lambda n: (-seen.logp[n], n))[:rerank]
        kept = _closed(seen, order)
    tree = seen.subset(kept)
    renumber = {old: i for i, old in enumerate(sorted(kept))}
    return Grown(tree, {renumber[n]: c for n, c in cache_index.items() if n in renumber})


def _closed(tree: Tree, nodes: list[int]) -> list[int]:
    """`nodes` plus any missing ancestors (ties in path probability can leave one out)."""
    out = set(nodes)
    for n in nodes:
        p = tree.parents[n]
        while p >= 0 and p not in out:
            out.add(p)
            p = tree.parents[p]
    return sorted(out)


def path_to(tree: Tree, node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = tree.parents[node]
    return path[::-1]
