"""One version of a Delta table as a reader sees it: its live files, their partition values, and
the one partition-filter evaluator.

A partition value is a string in the Delta log; it compares by its column's type, as Spark
compares it (a string column holding '10' and '9' has '10' < '9'; an integer column has
10 > 9). `PartitionSelection` is the only code that decides whether a partition matches a
filter: the data source's reader (`load_snapshot`), Spark's native Parquet scan and the planner's
catalog (plan/catalog.py, which decides whether a run has anything to score) all ask it, so
they cannot disagree. This module needs no Spark: the planner imports it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pyarrow as pa

from batchscore.errors import SinkError, did_you_mean
from batchscore.sinks.schema import check_table_features, table_arrow_schema
from batchscore.sinks.storage import open_table

OPS = ("=", "==", "!=", "<", "<=", ">", ">=", "in", "not in")
"""The partition-filter operators."""

Condition = tuple[str, str, Any]
"""(column, operator, value typed per the column)."""


# --------------------------------------------------------------------------------------------
# partition values


def partition_string(value: Any) -> str | None:
    """Delta's string form of a partition value (None and "" are null, as Spark writes them)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    return text if text != "" else None


def parse_partition_value(value: str | None, delta_type: str) -> Any:
    """Typed Python value of a partition string, per the column's Delta primitive type."""
    if value is None:
        return None
    if delta_type in ("byte", "short", "integer", "long"):
        return int(value)
    if delta_type in ("float", "double"):
        return float(value)
    if delta_type == "boolean":
        return value.lower() == "true"
    if delta_type == "date":
        return date.fromisoformat(value)
    if delta_type in ("timestamp", "timestamp_ntz"):
        return datetime.fromisoformat(value)
    return value


def partition_type(dtype: pa.DataType) -> str:
    """The Delta primitive type name by which values of a partition column of Arrow type `dtype`
    compare ("string" for every type compared as text)."""
    t = pa.types
    names = (
        (t.is_int8, "byte"),
        (t.is_int16, "short"),
        (t.is_int32, "integer"),
        (t.is_int64, "long"),
        (t.is_float32, "float"),
        (t.is_float64, "double"),
        (t.is_boolean, "boolean"),
        (t.is_date, "date"),
    )
    for test, name in names:
        if test(dtype):
            return name
    if t.is_timestamp(dtype):
        return "timestamp" if dtype.tz is not None else "timestamp_ntz"
    return "string"


def partition_types(schema: pa.Schema, columns: Sequence[str]) -> dict[str, str]:
    """{column: Delta primitive type name} for the partition `columns` of a table's `schema`."""
    return {name: partition_type(schema.field(name).type) for name in columns}


# --------------------------------------------------------------------------------------------
# the partition-filter evaluator


@dataclass(frozen=True)
class PartitionSelection:
    """Partition filters with their values typed per column: groups of conditions, AND within a
    group, OR between groups; no group selects every partition."""

    groups: tuple[tuple[Condition, ...], ...]
    types: Mapping[str, str]
    """{partition column: Delta primitive type name}."""

    def accepts(self, values: Mapping[str, str | None]) -> bool:
        """Whether the partition with these (Delta string) values matches."""
        if not self.groups:
            return True
        return any(
            all(_matches(values.get(col), op, val, self.types[col]) for col, op, val in group)
            for group in self.groups
        )


def partition_selection(
    path: str,
    filters: Sequence[Any] | None,
    types: Mapping[str, str],
    *,
    label: str | None = None,
) -> PartitionSelection:
    """Parse `filters` against a table's partition columns (`types`, in order); SinkError, naming
    the table (`label`, default "Delta table <path>"), when one cannot apply.

    `filters`: a list of (column, op, value) triples joined by AND, or a list of such lists
    joined by OR; ops are those of OPS; columns must be partition columns. Values are typed per
    the column (a date column compares dates).
    """
    where = label or f"Delta table {path}"
    parts = list(types)
    if not filters:
        return PartitionSelection((), dict(types))
    nested = all(
        isinstance(f, (list, tuple)) and f and isinstance(f[0], (list, tuple)) for f in filters
    )
    raw_groups = [list(group) for group in filters] if nested else [list(filters)]
    groups: list[tuple[Condition, ...]] = []
    for raw in raw_groups:
        group = []
        for item in raw:
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise SinkError(
                    f"{where}: partition filter {item!r} is not a [column, op, value] "
                    'triple; write e.g. [["ds", "=", "2026-11-21"]].'
                )
            column, op, value = str(item[0]), str(item[1]).lower().strip(), item[2]
            if column not in parts:
                raise SinkError(
                    f"{where}: partition filter on '{column}', which is not a partition "
                    f"column (partition columns: {parts});{did_you_mean(column, parts)} "
                    "filter other columns in Spark after the read."
                )
            if op not in OPS:
                raise SinkError(
                    f"{where}: partition filter operator '{op}' is not supported; use "
                    f"one of {', '.join(OPS)}."
                )
            if op in ("in", "not in"):
                if not isinstance(value, (list, tuple, set, frozenset)):
                    raise SinkError(
                        f"{where}: partition filter '{column} {op}' needs a list "
                        f'value, got {value!r}; write e.g. ["{column}", "in", ["a", "b"]].'
                    )
                typed: Any = [_coerce(where, column, v, types[column]) for v in value]
            else:
                typed = _coerce(where, column, value, types[column])
            group.append((column, op, typed))
        groups.append(tuple(group))
    return PartitionSelection(tuple(groups), dict(types))


def filters_json(filters: Sequence[Any]) -> list[Any]:
    """`filters` with dates and datetimes as their partition strings, for a JSON option."""

    def value(v: Any) -> Any:
        if isinstance(v, (list, tuple, set, frozenset)):
            return [value(x) for x in v]
        if isinstance(v, (date, datetime)):
            return partition_string(v)
        return v

    out: list[Any] = []
    for item in filters:
        if isinstance(item, (list, tuple)) and item and isinstance(item[0], (list, tuple)):
            out.append(filters_json(item))
        elif isinstance(item, (list, tuple)) and len(item) == 3:
            out.append([item[0], item[1], value(item[2])])
        else:
            out.append(item)
    return out


def _coerce(where: str, column: str, value: Any, delta_type: str) -> Any:
    if value is None:
        return None
    try:
        return parse_partition_value(partition_string(value), delta_type)
    except (TypeError, ValueError):
        raise SinkError(
            f"{where}: partition filter value {value!r} does not parse as the type "
            f"{delta_type} of column '{column}'; pass a {delta_type} value."
        ) from None


def _matches(raw: str | None, op: str, value: Any, delta_type: str) -> bool:
    actual = parse_partition_value(raw, delta_type)
    if op in ("in", "not in"):
        inside = actual in value
        return inside if op == "in" else (actual is not None and not inside)
    if value is None or actual is None:
        if op in ("=", "=="):
            return actual is None and value is None
        if op == "!=":
            return (actual is None) != (value is None)
        return False
    result: bool
    if op in ("=", "=="):
        result = actual == value
    elif op == "!=":
        result = actual != value
    elif op == "<":
        result = actual < value
    elif op == "<=":
        result = actual <= value
    elif op == ">":
        result = actual > value
    else:
        result = actual >= value
    return result


# --------------------------------------------------------------------------------------------
# live files


@dataclass(frozen=True)
class LiveFile:
    """One data file of a table snapshot."""

    path: str
    """Relative to the table root, decoded (as on disk)."""
    size: int
    partition_values: dict[str, str | None]
    num_records: int | None


@dataclass(frozen=True)
class Snapshot:
    """What a reader needs from one table version: schema, partitioning and files."""

    path: str
    version: int
    schema: pa.Schema
    partition_columns: list[str]
    files: list[LiveFile]


def load_snapshot(
    path: str,
    *,
    version: int | None = None,
    partition_filters: Sequence[Any] | None = None,
) -> Snapshot:
    """Open the table at `path` (normalized), list its live files, keep those matching filters
    (see partition_selection)."""
    table = open_table(path, version=version)
    check_table_features(table, path=path, for_write=False)
    schema = table_arrow_schema(table)
    parts = list(table.metadata().partition_columns)
    selection = partition_selection(path, partition_filters, partition_types(schema, parts))
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    files: list[LiveFile] = []
    for action in actions:
        values = {name: _as_str(action.get(f"partition.{name}")) for name in parts}
        if not selection.accepts(values):
            continue
        files.append(
            LiveFile(
                path=urllib.parse.unquote(str(action["path"])),
                size=int(action["size_bytes"]),
                partition_values=values,
                num_records=None
                if action.get("num_records") is None
                else int(action["num_records"]),
            )
        )
    return Snapshot(
        path=path,
        version=int(table.version()),
        schema=schema,
        partition_columns=parts,
        files=files,
    )


def _as_str(value: Any) -> str | None:
    """A partition value of delta-rs' flattened add actions as the log's string."""
    return None if value is None else value if isinstance(value, str) else str(value)
