"""Tree rewriting helpers shared by rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from batchscore.plan.nodes import Node, Partial, Scan


def replace_scans(node: Node, visit: Callable[[Scan], Scan]) -> Node:
    """Rebuild the tree with every Scan passed through `visit`."""
    if isinstance(node, Scan):
        return visit(node)
    if isinstance(node, Partial):
        return replace(node, child=replace_scans(node.child, visit))
    return replace(
        node, left=replace_scans(node.left, visit), right=replace_scans(node.right, visit)
    )


def root_table(node: Node) -> str:
    """The table whose rows a subtree keeps: the leftmost scan (left joins keep the left side)."""
    while not isinstance(node, Scan):
        node = node.child if isinstance(node, Partial) else node.left
    return node.table
