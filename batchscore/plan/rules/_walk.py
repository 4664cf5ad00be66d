"""Tree rewriting helpers shared by rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from batchscore.plan.nodes import Join, Node, Scan


def replace_scans(node: Node, visit: Callable[[Scan], Scan]) -> Node:
    """Rebuild the tree with every Scan passed through `visit`."""
    if isinstance(node, Scan):
        return visit(node)
    return replace(
        node, left=replace_scans(node.left, visit), right=replace_scans(node.right, visit)
    )


def root_table(node: Node) -> str:
    while isinstance(node, Join):
        node = node.left
    return node.table
