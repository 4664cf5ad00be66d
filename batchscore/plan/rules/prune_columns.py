"""Read only the columns someone uses: id columns, join keys, predicate columns, features.

Dimension tables of real feature stores are wide; a scan that reads every column carries them
through the join for nothing.
"""

from __future__ import annotations

from dataclasses import replace

from batchscore.plan.nodes import Decision, LogicalPlan, Node, Partial, Scan, children
from batchscore.plan.predicates import referenced_columns
from batchscore.plan.rules._walk import replace_scans


def prune_columns(plan: LogicalPlan) -> LogicalPlan:
    needed = _needed_columns(plan)
    decisions: list[Decision] = []

    def visit(scan: Scan) -> Scan:
        info = plan.tables[scan.table]
        keep = tuple(c for c in info.schema.names if c in needed.get(scan.table, set()))
        decisions.append(
            Decision(
                "prune_columns",
                f"{scan.table}: reads {len(keep)} of {len(info.schema.names)} columns",
            )
        )
        return replace(scan, columns=keep)

    source = replace_scans(plan.source, visit)
    return replace(plan, source=source, decisions=(*plan.decisions, *decisions))


def _needed_columns(plan: LogicalPlan) -> dict[str, set[str]]:
    needed: dict[str, set[str]] = {name: set() for name in plan.tables}
    for column in plan.id_columns:
        needed[column.table].add(column.column)
    for feature in plan.features():
        needed.setdefault(feature.table, set()).add(feature.column)

    def walk(node: Node) -> None:
        if isinstance(node, Scan):
            if node.predicate:
                needed[node.table] |= referenced_columns(node.predicate)
        elif isinstance(node, Partial):
            for model in node.models:
                for feature in model.inputs:
                    needed.setdefault(feature.table, set()).add(feature.column)
        else:
            for left, right in node.on:
                needed[node.parent].add(left)
                needed[node.table].add(right)
        for child in children(node):
            walk(child)

    walk(plan.source)
    return needed
