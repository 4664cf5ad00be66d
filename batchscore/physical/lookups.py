"""Small dimensions joined inside the scoring task instead of by Spark ("lookup joins").

A broadcast join makes Spark copy the dimension's features into every fact row and then convert
each of them to Arrow for the Python worker: on Walmart (a 45-row dimension of 53 dense
one-hot columns, a 2,340-row one with a 2,387-wide sparse vector) that transfer carried 249 MB
for 421,570 rows, 1.36 s against 0.63 s for the fact columns alone. A lookup join ships the
dimension's rows once, with the scoring task, and each batch gathers them by key with Arrow's
`take` (a copy of the bytes it needs, no conversion).

The batches the scoring task sees are the ones the Spark join would have given it: the same
columns in the same order and types, nulls where no dimension row matched (a left join), and
the join's present flag (true, or null when no row matched). So everything downstream
(assembly, validation, monitoring, null counts) is unchanged. Which joins qualify is the
planner's call (plan/lookups.py); duplicate dimension keys are refused with the Spark path's
error. `BATCHSCORE_LOOKUP_JOINS=0` keeps every join in Spark.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from batchscore.errors import BatchScoreError, DataError
from batchscore.plan.lookups import LOOKUP_PARTIAL_BYTES, LOOKUP_ROWS, comparable
from batchscore.plan.nodes import Join, Partial, Scan, present_flag, qualified
from batchscore.sinks.snapshot import load_snapshot
from batchscore.sinks.storage import is_object_store, normalize_path


def duplicate_key_error(table: str, values: str, count: int) -> DataError:
    return DataError(
        f"Dimension table '{table}' has {count} rows for key {values}; a join key must be "
        "unique or fact rows would be duplicated. Deduplicate the table."
    )


DriverRows = Callable[[StructType], "pa.Table | None"]
"""Reads a dimension's columns (the schema Spark gives them) on the driver, or None."""


@dataclass(frozen=True, eq=False)
class DenseList:
    """An array column whose rows all hold the same number of non-null numbers (features
    stored as arrays, partial scores), kept as one matrix: a row gather is one numpy `take`,
    three times faster than Arrow's `take` of a list array (210 doubles a row, 10,000 rows:
    2.5 ms against 7.4 ms)."""

    type: pa.DataType
    values: np.ndarray
    """(rows + 1, width): the last row is all zero and stands for a null or missing row."""
    valid: np.ndarray
    """(rows + 1,): False for null rows and for the last row."""

    @staticmethod
    def of(column: pa.Array) -> DenseList | None:
        if not pa.types.is_list(column.type):
            return None
        items = column.type.value_type
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        numeric = pa.types.is_floating(items) or pa.types.is_integer(items)
        widths = np.unique(lengths[valid])
        if not numeric or len(widths) > 1 or pc.list_flatten(column).null_count:
            return None
        width = int(widths[0]) if len(widths) else 0
        values = np.zeros((len(column) + 1, width), dtype=items.to_pandas_dtype())
        values[:-1][valid] = pc.list_flatten(column).to_numpy().reshape(-1, width)
        return DenseList(column.type, values, np.append(valid, False))

    def take(self, at: np.ndarray) -> pa.Array | None:
        """The rows at `at` (-1: a null row), as the list array Arrow's `take` would give;
        None past int32 list offsets (Arrow's `take` then)."""
        rows = np.where(at < 0, len(self.valid) - 1, at)
        n, width = len(rows), self.values.shape[1]
        if n * width >= 2**31:
            return None
        offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
        flat = pa.array(np.take(self.values, rows, axis=0).reshape(-1))
        mask = pa.array(~self.valid[rows])
        return pa.ListArray.from_arrays(offsets, flat, type=self.type, mask=mask)


@dataclass(frozen=True)
class LookupJoin:
    """One dimension's rows, shipped with the task: its keys and the columns the models read."""

    table: str
    left: str
    """The fact column holding the key (its name in the scanned frame)."""
    keys: pa.Array
    """The dimension's keys, as int64 or string (both sides are cast to it)."""
    columns: pa.Table
    """The dimension's columns the scoring task reads, named as the Spark join names them."""
    order: np.ndarray
    """Integer keys: the rows with a key, ordered by it (empty for string keys)."""
    ordered: np.ndarray
    """Integer keys: the keys of those rows, in that order."""
    dense: dict[str, DenseList]
    """The fixed-width numeric array columns, gathered with numpy (`DenseList`)."""

    @property
    def flag(self) -> str:
        return present_flag(self.table)

    @staticmethod
    def build(
        join: Join,
        dimension: DataFrame,
        left_type: pa.DataType,
        wanted: Sequence[str],
        on_driver: DriverRows | None = None,
    ) -> LookupJoin | None:
        """The lookup for `join` from its lowered dimension (a scan, or partial scores over one);
        None when the key types do not allow one (or the table has more than LOOKUP_ROWS rows):
        the join stays in Spark. `on_driver` gives the same rows without a Spark job where it
        can (a plain scan: `read_on_driver`)."""
        ((left, right),) = join.on
        key = qualified(join.table, right)
        chosen = dimension.select(*dict.fromkeys([key, *wanted]))  # the key may be a feature
        if on_driver is None and isinstance(join.right, Scan):
            scan = join.right
            on_driver = lambda schema: read_on_driver(scan, schema)  # noqa: E731
        rows = on_driver(chosen.schema) if on_driver is not None else None
        if rows is None:
            rows = chosen.limit(LOOKUP_ROWS + 1).toArrow()
        if rows.num_rows > LOOKUP_ROWS or not comparable(left_type, rows.schema.field(key).type):
            return None
        _check_unique(join.table, rows, key)
        table = pa.table({name: rows.column(name).combine_chunks() for name in wanted})
        if isinstance(join.right, Partial) and table.nbytes > LOOKUP_PARTIAL_BYTES:
            return None
        keys = rows.column(key).combine_chunks().cast(_common_type(left_type))
        order = ordered = np.zeros(0, dtype=np.int64)
        if pa.types.is_integer(keys.type):
            valid = np.flatnonzero(keys.is_valid().to_numpy(zero_copy_only=False))
            values = keys.fill_null(0).to_numpy()
            order = valid[np.argsort(values[valid], kind="stable")]
            ordered = values[order]
        dense = {n: d for n in wanted if (d := DenseList.of(table.column(n).chunk(0))) is not None}
        return LookupJoin(
            join.table, qualified(join.parent, left), keys, table, order, ordered, dense
        )

    def positions(self, batch: pa.RecordBatch) -> pa.Array:
        """The dimension row of each fact row (null where none matches, as a left join)."""
        probe = batch.column(self.left).cast(self.keys.type)
        if not pa.types.is_integer(self.keys.type):
            return pc.index_in(probe, value_set=self.keys, skip_nulls=True)
        # A binary search over the ordered keys: index_in would build a hash table per batch.
        ordered = self.ordered
        wanted = probe.fill_null(0).to_numpy()
        found = probe.is_valid().to_numpy(zero_copy_only=False)
        if len(ordered) == 0:
            return pa.nulls(len(probe), pa.int64())
        at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
        found &= ordered[at] == wanted
        return pa.array(self.order[at], type=pa.int64(), mask=~found)


@dataclass(frozen=True)
class LookupJoins:
    """The task's lookup joins and the columns (in order) of the batches the Spark joins would
    have given the scoring task."""

    joins: tuple[LookupJoin, ...]
    names: tuple[str, ...]

    def joined(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield self.join(batch)

    def join(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        fields = {f.name: (f, batch.column(i)) for i, f in enumerate(batch.schema)}
        for lookup in self.joins:
            where = lookup.positions(batch)
            at = where.fill_null(-1).to_numpy()
            for name in lookup.columns.column_names:
                dense = lookup.dense.get(name)
                column = dense.take(at) if dense is not None else None
                if column is None:
                    column = lookup.columns.column(name).chunk(0).take(where)
                fields[name] = (pa.field(name, column.type), column)
            flag = pc.if_else(pc.is_valid(where), True, pa.scalar(None, pa.bool_()))
            fields[lookup.flag] = (pa.field(lookup.flag, pa.bool_()), flag)
        chosen = [fields[name] for name in self.names]
        return pa.RecordBatch.from_arrays(
            [column for _, column in chosen], schema=pa.schema([f for f, _ in chosen])
        )


def read_on_driver(scan: Scan, schema: StructType) -> pa.Table | None:
    """The scanned dimension's columns `schema` (named `table__column`) read by pyarrow on the
    driver: no Spark job (~0.1 s each on a local master). Only where that reads what Spark
    reads: a local, unpartitioned Delta table or a flat Parquet folder, no predicate, columns
    that cast exactly to Spark's types (no timestamps, whose zone Spark sets); else None."""
    if scan.predicate or is_object_store(scan.path):
        return None
    target = to_arrow_schema(schema)
    if any(pa.types.is_timestamp(f.type) for f in target):
        return None
    prefix = f"{scan.table}__"
    raw = [name.removeprefix(prefix) for name in target.names]
    try:
        files = _files(scan)
        if files is None:
            return None
        table = ds.dataset(files, format="parquet").to_table(columns=raw)
        if table.num_rows > LOOKUP_ROWS:
            return None
        return table.rename_columns(target.names).cast(target)
    except (OSError, ValueError, TypeError, pa.ArrowException, BatchScoreError):
        return None  # Spark reads it instead


def _files(scan: Scan) -> list[str] | None:
    path = normalize_path(scan.path)
    if scan.format == "delta":
        filters = list(scan.partition_filters) or None
        snap = load_snapshot(path, version=scan.version, partition_filters=filters)
        if snap.partition_columns or not snap.files:
            return None
        return [f.path if os.path.isabs(f.path) else os.path.join(path, f.path) for f in snap.files]
    entries = [e for e in os.scandir(path) if not e.name.startswith(("_", "."))]
    if not entries or any(e.is_dir() for e in entries):
        return None  # nothing, or Hive partition folders: Spark's partition discovery
    return sorted(e.path for e in entries)


def _common_type(left: pa.DataType) -> pa.DataType:
    return pa.int64() if pa.types.is_integer(left) else pa.string()


def _check_unique(table: str, rows: pa.Table, key: str) -> None:
    counts = rows.group_by(key, use_threads=False).aggregate([([], "count_all")])
    many = pc.greater(counts.column("count_all"), 1)
    if pc.any(many).as_py():
        first = counts.filter(many).slice(0, 1).to_pylist()[0]
        name = key.split("__", 1)[1]
        raise duplicate_key_error(table, f"{name}={first[key]!r}", first["count_all"])


@dataclass
class Deferred:
    """The joins left to the scoring task, filled while lowering (`lower.scoring_input`)."""

    joins: list[LookupJoin]
    names: tuple[str, ...] = ()

    def frozen(self) -> LookupJoins | None:
        return LookupJoins(tuple(self.joins), self.names) if self.joins else None
