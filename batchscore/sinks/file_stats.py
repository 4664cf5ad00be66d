"""Delta file statistics (numRecords, minValues, maxValues, nullCount) of a written data file.

The Parquet writer already computes each column chunk's min, max and null count for the footer,
so the add action takes them from there instead of a second pass over every column: on the
wide output of 32 models (300,000 rows) the second pass cost 0.13 s per file, as much as
writing the float columns. Only floats are still looked at, with one sum per batch: Parquet
statistics ignore NaN, and a file holding a NaN must state no bounds for that column (a reader
skipping files by bounds would otherwise skip the NaN rows).

Which columns get statistics follows Delta: the first `delta.dataSkippingNumIndexedCols` leaf
columns of the table (default 32, -1 for all), or the names in
`delta.dataSkippingStatsColumns` when the table sets it. Wide outputs of many models have
hundreds of columns; statistics on the ids and the first models' scores are the ones a query
skips files by.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

INDEXED_COLUMNS = 32
"""Delta's default for `delta.dataSkippingNumIndexedCols`."""
STATS_STRING_CHARS = 32
"""String bounds longer than this are cut (a min) or left out (a max), as Delta does."""
NUM_INDEXED = "delta.dataSkippingNumIndexedCols"
STATS_COLUMNS = "delta.dataSkippingStatsColumns"


def indexed_columns(schema: pa.Schema, configuration: Mapping[str, str | None]) -> tuple[str, ...]:
    """The top-level columns of the file `schema` that get statistics, per the table's
    configuration (see the module docstring)."""
    named = configuration.get(STATS_COLUMNS)
    if named:
        wanted = {part.strip().strip("`") for part in named.split(",")}
        return tuple(name for name in schema.names if name in wanted)
    raw = configuration.get(NUM_INDEXED)
    try:
        budget = int(raw) if raw not in (None, "") else INDEXED_COLUMNS
    except ValueError:
        budget = INDEXED_COLUMNS
    if budget < 0:
        return tuple(schema.names)
    chosen: list[str] = []
    for field in schema:
        if budget <= 0:
            break
        chosen.append(field.name)
        budget -= _leaves(field.type)
    return tuple(chosen)


def _leaves(dtype: pa.DataType) -> int:
    if pa.types.is_struct(dtype):
        return sum(_leaves(dtype.field(i).type) for i in range(dtype.num_fields))
    if pa.types.is_map(dtype):
        return _leaves(dtype.key_type) + _leaves(dtype.item_type)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return _leaves(dtype.value_type)
    return 1


def _stats_kind(dtype: pa.DataType) -> str | None:
    """How a column's bounds are stated; "count" = null count only, None = no statistics."""
    t = pa.types
    if t.is_signed_integer(dtype):
        return "int"
    if t.is_float32(dtype) or t.is_float64(dtype):
        return "float"
    if t.is_string(dtype):
        return "string"
    if t.is_date32(dtype):
        return "date"
    if t.is_timestamp(dtype):
        return "timestamp" if dtype.tz is not None else "count"
    if t.is_boolean(dtype):
        return "bool"
    if t.is_decimal(dtype) or t.is_binary(dtype) or t.is_float16(dtype):
        return "count"
    return None


class FileStats:
    """Statistics of one data file: `observe` each table written to it, then `to_json` with the
    footer the writer produced on close."""

    def __init__(self, schema: pa.Schema, columns: tuple[str, ...]) -> None:
        self.kinds = {
            f.name: kind
            for f in schema
            if f.name in columns and (kind := _stats_kind(f.type)) is not None
        }
        self.no_bounds: set[str] = set()

    def observe(self, table: pa.Table) -> None:
        """Flag float columns holding a NaN (a NaN, or +inf and -inf together, make the sum
        NaN; the second only costs the column its bounds)."""
        for name, kind in self.kinds.items():
            if kind != "float" or name in self.no_bounds:
                continue
            total = pc.sum(table.column(name)).as_py()
            if total is not None and math.isnan(total):
                self.no_bounds.add(name)

    def to_json(self, footer: pq.FileMetaData) -> str:
        nulls: dict[str, int] = {}
        mins: dict[str, Any] = {}
        maxs: dict[str, Any] = {}
        index = _column_index(footer)
        no_bounds = set(self.no_bounds)
        for name, kind in self.kinds.items():
            position = index.get(name)
            if position is None:
                continue
            count: int | None = 0
            for group in range(footer.num_row_groups):
                chunk = footer.row_group(group).column(position)
                stats = chunk.statistics
                if stats is None or not stats.has_null_count:
                    count = None
                    no_bounds.add(name)
                    break
                count = (count or 0) + stats.null_count
                if kind == "count" or name in no_bounds:
                    continue
                if stats.has_min_max and kind == "float" and _nan_bound(stats):
                    no_bounds.add(name)  # Spark's writer (parquet-java) records a NaN so
                elif stats.has_min_max:
                    _merge(mins, name, stats.min, min)
                    _merge(maxs, name, stats.max, max)
                elif stats.null_count < footer.row_group(group).num_rows:
                    no_bounds.add(name)  # values without bounds (e.g. a very long string)
            if count is not None:
                nulls[name] = count
        low_json: dict[str, Any] = {}
        high_json: dict[str, Any] = {}
        for name in mins:
            if name in no_bounds:
                continue
            kind = self.kinds[name]
            low = _stat_value(mins[name], kind, upper=False)
            high = _stat_value(maxs[name], kind, upper=True)
            if low is not None and high is not None:
                low_json[name], high_json[name] = low, high
        return json.dumps(
            {
                "numRecords": footer.num_rows,
                "minValues": low_json,
                "maxValues": high_json,
                "nullCount": nulls,
            },
            allow_nan=False,
        )


def _nan_bound(stats: pq.Statistics) -> bool:
    return bool(math.isnan(stats.min) or math.isnan(stats.max))


def _column_index(footer: pq.FileMetaData) -> dict[str, int]:
    """Top-level primitive columns by name -> their position in the row groups."""
    if footer.num_row_groups == 0:
        return {}
    group = footer.row_group(0)
    return {group.column(i).path_in_schema: i for i in range(group.num_columns)}


def _merge(store: dict[str, Any], name: str, value: Any, pick: Callable[[Any, Any], Any]) -> None:
    store[name] = value if name not in store else pick(store[name], value)


def _stat_value(value: Any, kind: str, *, upper: bool) -> Any:
    """JSON form of a min (upper=False) or max bound; None when it cannot be stated safely."""
    if kind == "float":
        return float(value) if math.isfinite(value) else None
    if kind == "string":
        text = str(value)
        if len(text) <= STATS_STRING_CHARS:
            return text
        return None if upper else text[:STATS_STRING_CHARS]
    if kind == "date" and isinstance(value, date):
        return value.isoformat()
    if kind == "timestamp" and isinstance(value, datetime):
        # Delta stats hold milliseconds: round a max up, a min down, so bounds stay bounds.
        spare = value.microsecond % 1000
        if spare:
            value = value - timedelta(microseconds=spare)
            if upper:
                value = value + timedelta(milliseconds=1)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if kind in ("int", "bool"):
        return value
    return None
