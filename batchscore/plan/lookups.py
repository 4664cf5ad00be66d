"""Which joins the scoring task does itself (physical/lookups.py): the planner's side.

A join is looked up (its dimension shipped with the task, joined there by key) only where that
is exactly Spark's left join and cheap to ship:
- the dimension is one table read alone (no dimension joined below it), or the partial scores
  of one such table (a factorized join: the scores are computed once, on the driver where it
  can read the table, and shipped instead of the features), joined to the fact table on one
  key column, both integers or both strings (Spark compares
  them as the same values; float keys, with NaN equal to itself in Spark's joins, stay there);
- its files total at most LOOKUP_BYTES (and, checked when it is read, it has at most
  LOOKUP_ROWS rows, and partial scores take at most LOOKUP_PARTIAL_BYTES in memory);
- nothing filters or computes on the joined rows in Spark first: no `on_missing: quarantine`
  on this join and no id column from the dimension (quarantine rules and counted user rules,
  which read the joined rows in Spark, turn lookups off for the whole run:
  physical.lower.scoring_input; explain says so).
"""

from __future__ import annotations

import os

import pyarrow as pa

from batchscore.plan.nodes import Join, LogicalPlan, Partial, Scan

ENV = "BATCHSCORE_LOOKUP_JOINS"
LOOKUP_BYTES = 16 * 1024 * 1024
"""Largest dimension (its files' bytes) shipped with the scoring task."""
LOOKUP_ROWS = 200_000
LOOKUP_PARTIAL_BYTES = 64 * 1024 * 1024
"""Largest partial scores (in memory) shipped with the scoring task: a tree ensemble's words
take 8 bytes per tree and dimension row."""


def lookups_enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def may_look_up(plan: LogicalPlan, join: Join) -> bool:
    """Whether the scoring task may do `join` (see the module doc)."""
    read = join.right.child if isinstance(join.right, Partial) else join.right
    if not (lookups_enabled() and isinstance(read, Scan) and len(join.on) == 1):
        return False
    if join.parent != plan.spec.source.table or join.on_missing == "quarantine":
        return False
    if any(other.parent == join.table for other in plan.joins()):
        return False
    if any(c.ref.startswith(f"{join.table}__") for c in plan.id_columns):
        return False
    if sum(f[2] for f in plan.tables[join.table].files) > LOOKUP_BYTES:
        return False
    ((left, right),) = join.on
    left_type = _column_type(plan, join.parent, left)
    right_type = _column_type(plan, join.table, right)
    return left_type is not None and right_type is not None and comparable(left_type, right_type)


def comparable(left: pa.DataType, right: pa.DataType) -> bool:
    """Key types a lookup compares as Spark's join does: integers, or strings."""
    both_integers = pa.types.is_integer(left) and pa.types.is_integer(right)
    both_strings = pa.types.is_string(left) and pa.types.is_string(right)
    return bool(both_integers or both_strings)


def _column_type(plan: LogicalPlan, table: str, column: str) -> pa.DataType | None:
    schema = plan.tables[table].schema
    return schema.field(column).type if column in schema.names else None
