"""A joined table that no model and no output column reads is not joined at all (as in Raven).

A left join on a unique key neither adds nor removes fact rows, so dropping it changes nothing
but the work: the scan, the broadcast and the join disappear. Snowflake children of a dropped
dimension go with it, unless something reads them, in which case the dimension stays. A join
with `on_missing: quarantine` removes rows, so it always stays.
"""

from __future__ import annotations

from dataclasses import replace

from batchscore.plan.nodes import Decision, Join, LogicalPlan, Node, subtree_tables


def eliminate_unused_joins(plan: LogicalPlan) -> LogicalPlan:
    used = {f.table for f in plan.features()} | {c.table for c in plan.id_columns}
    decisions: list[Decision] = []

    def visit(node: Node) -> Node:
        if not isinstance(node, Join):
            return node
        if not (subtree_tables(node.right) & used) and not _quarantines(node.right, node):
            decisions.append(
                Decision(
                    "eliminate_unused_joins",
                    f"{node.table}: no model or output column reads it; join removed",
                )
            )
            return visit(node.left)
        return replace(node, left=visit(node.left), right=visit(node.right))

    source = visit(plan.source)
    if not decisions and plan.joins():
        decisions.append(
            Decision("eliminate_unused_joins", "every joined table is read; no join removed")
        )

    tables = {name: info for name, info in plan.tables.items() if name in subtree_tables(source)}
    return replace(plan, source=source, tables=tables, decisions=(*plan.decisions, *decisions))


def _quarantines(subtree: Node, join: Join) -> bool:
    """A join that quarantines unmatched rows decides which rows are scored: it stays."""
    if join.on_missing == "quarantine":
        return True
    if isinstance(subtree, Join):
        return _quarantines(subtree.right, subtree) or _quarantines(subtree.left, join)
    return False
