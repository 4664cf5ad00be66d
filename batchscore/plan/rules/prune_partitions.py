"""Read only the partitions the job's `where` can match.

The partition conjuncts of `source.where` become delta-rs partition filters handed to the
project's reader (Spark's filter pushdown into Python sources went stale in 4.2), so unmatched
files are never listed to Spark. The full predicate still runs in Spark, so pruning can only
skip files that could not match.
"""

from __future__ import annotations

from dataclasses import replace

from batchscore.plan.nodes import Decision, LogicalPlan, Scan
from batchscore.plan.predicates import partition_filters
from batchscore.plan.rules._walk import replace_scans


def prune_partitions(plan: LogicalPlan) -> LogicalPlan:
    decisions: list[Decision] = []

    def visit(scan: Scan) -> Scan:
        info = plan.tables[scan.table]
        if not scan.predicate or not info.partition_columns:
            return scan
        filters = partition_filters(scan.predicate, info.partition_columns)
        if not filters:
            return scan
        selected, total = info.select_files(filters), info.files
        rows = sum(max(f[3], 0) for f in selected)
        decisions.append(
            Decision(
                "prune_partitions",
                f"{scan.table}: {_fmt(filters)} keeps {len(selected)} of {len(total)} files"
                + (f" ({rows:,} rows)" if all(f[3] >= 0 for f in selected) else ""),
            )
        )
        return replace(scan, partition_filters=tuple(filters))

    source = replace_scans(plan.source, visit)
    return replace(plan, source=source, decisions=(*plan.decisions, *decisions))


def _fmt(filters: list[tuple[str, str, object]]) -> str:
    return " AND ".join(f"{c} {op} {v!r}" for c, op, v in filters)
