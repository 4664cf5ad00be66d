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
(assembly, validation, monitoring, null counts) is unchanged.

Faster still, a task that only scores (no monitoring, no validation rules) gathers the models'
blocks instead (`LookupJoins.join` with `thin`): each dimension column is assembled once per
task, over the dimension's rows plus one all-missing row, and each batch gathers rows of that
block by fact row. The block of a column depends on each row alone, so that is the block the
joined column would have given; the Arrow columns are left out of the batch, and are joined
only if a batch has null predictions to explain. On Walmart, lookups plus assembly took 0.26 s
for 421,570 rows in one thread; gathering blocks took 0.05 s. Which joins qualify is the
planner's call (plan/lookups.py); duplicate dimension keys are refused with the Spark path's
error. `BATCHSCORE_LOOKUP_JOINS=0` keeps every join in Spark.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import from_arrow_type, to_arrow_schema
from pyspark.sql.types import ArrayType, DataType, StructField, StructType

from batchscore.errors import BatchScoreError, DataError
from batchscore.physical.assemble import Block, Column, column_block
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
    built: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """What a task builds once and reuses for every batch: the key table (`rows`) and each
    column's block (`block`). Empty when shipped: the driver builds none of it."""

    @property
    def flag(self) -> str:
        return present_flag(self.table)

    def rows(self, batch: pa.RecordBatch) -> np.ndarray:
        """The dimension row of each fact row, -1 where none matches (a left join)."""
        probe = batch.column(self.left).cast(self.keys.type)
        if not pa.types.is_integer(self.keys.type):
            found = pc.index_in(probe, value_set=self.keys, skip_nulls=True)
            return np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64)
        wanted = probe.fill_null(0).to_numpy()
        valid = probe.is_valid().to_numpy(zero_copy_only=False)
        direct = self._direct()
        if direct is not None:  # keys over a short range: one table read per row
            low, table = direct
            at = wanted - low
            inside = valid & (at >= 0) & (at < len(table))
            return np.where(inside, table[np.where(inside, at, 0)], -1)
        # A binary search over the ordered keys: index_in would build a hash table per batch.
        ordered = self.ordered
        if len(ordered) == 0:
            return np.full(len(probe), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
        return np.where(valid & (ordered[at] == wanted), self.order[at], -1)

    def _direct(self) -> tuple[int, np.ndarray] | None:
        """(lowest key, dimension row by key - lowest, -1 for none) where the keys span at
        most DIRECT_SPAN slots per key; else None."""
        if "direct" not in self.built:
            ordered, made = self.ordered, None
            if len(ordered):
                low, span = int(ordered[0]), int(ordered[-1]) - int(ordered[0]) + 1
                if span <= DIRECT_SPAN * len(ordered) + 1024:
                    table = np.full(span, -1, dtype=np.int64)
                    table[ordered - low] = self.order
                    made = (low, table)
            self.built["direct"] = made
        result: tuple[int, np.ndarray] | None = self.built["direct"]
        return result

    def block(self, column: Column) -> Block | None:
        """The block of `column` over every dimension row and, last, one all-missing row;
        None where a dimension row cannot be assembled (the joined column then reports it
        for the fact rows that read it, as without the lookup)."""
        key = f"block:{column.ref}"
        if key not in self.built:
            values = self.columns.column(column.ref).chunk(0)
            rows = pa.concat_arrays([values, pa.nulls(1, values.type)])
            try:
                self.built[key] = column_block(rows, column)
            except (BatchScoreError, pa.ArrowException, ValueError, TypeError):
                self.built[key] = None
        block: Block | None = self.built[key]
        return block

    @staticmethod
    def build(
        join: Join,
        dimension: DataFrame | StructType,
        left_type: pa.DataType,
        wanted: Sequence[str],
        on_driver: DriverRows | None = None,
    ) -> LookupJoin | None:
        """The lookup for `join` from its lowered dimension (a scan, or partial scores over one)
        or only the schema Spark would give it (`scan_schema`: then from the rows read on the
        driver alone); None when the key types do not allow one, the table has more than
        LOOKUP_ROWS rows, or its rows can only be read by Spark and there is no frame: the
        join stays in Spark. `on_driver` gives the same rows without a Spark job where it can
        (a plain scan: `read_on_driver`)."""
        ((left, right),) = join.on
        key = qualified(join.table, right)
        names = list(dict.fromkeys([key, *wanted]))  # the key may be a feature
        if isinstance(dimension, StructType):
            chosen, schema = None, StructType([dimension[n] for n in names])
        else:
            chosen = dimension.select(*names)
            schema = chosen.schema
        if on_driver is None and isinstance(join.right, Scan):
            scan = join.right
            on_driver = lambda schema: read_on_driver(scan, schema)  # noqa: E731
        rows = on_driver(schema) if on_driver is not None else None
        if rows is None:
            if chosen is None:
                return None
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


DIRECT_SPAN = 4
"""Key table slots allowed per dimension key (LookupJoin.rows): integer keys over a range at
most this many times their count (plus 1,024) are found by one table read instead of a
binary search; 2,340 Walmart indicator keys: 0.1 ms instead of 0.5 ms a 10,000-row batch."""


def gathered(block: Block, rows: np.ndarray) -> Block:
    """Rows `rows` of a dimension block (-1: its last, all-missing row)."""
    at = np.where(rows < 0, block.shape[0] - 1, rows)
    if sp.issparse(block):
        return sp.csr_matrix(block[at])
    return np.take(block, at, axis=0)


@dataclass(frozen=True)
class LookupJoins:
    """The task's lookup joins and the columns (in order) of the batches the Spark joins would
    have given the scoring task."""

    joins: tuple[LookupJoin, ...]
    names: tuple[str, ...]

    def join(
        self, batch: pa.RecordBatch, blocks: Sequence[Column] = (), *, thin: bool = False
    ) -> tuple[pa.RecordBatch, dict[str, Block]]:
        """The batch the Spark joins would have given, and the blocks of the columns of `blocks`
        that have a dimension block (LookupJoin.block), gathered by fact row. `thin`: those
        columns are left out of the batch (the task reads them only through their blocks)."""
        fields = {f.name: (f, batch.column(i)) for i, f in enumerate(batch.schema)}
        wanted = {c.ref: c for c in blocks}
        out: dict[str, Block] = {}
        for lookup in self.joins:
            rows = lookup.rows(batch)
            missing = rows < 0
            for name in lookup.columns.column_names:
                column = wanted.get(name)
                block = lookup.block(column) if column is not None else None
                if block is not None:
                    out[name] = gathered(block, rows)
                    if thin:
                        continue
                array = _joined_column(lookup, name, rows, missing)
                fields[name] = (pa.field(name, array.type), array)
            flag = pa.array(np.ones(len(rows), dtype=bool), mask=missing)
            fields[lookup.flag] = (pa.field(lookup.flag, pa.bool_()), flag)
        chosen = [fields[name] for name in self.names if name in fields]
        joined = pa.RecordBatch.from_arrays(
            [column for _, column in chosen], schema=pa.schema([f for f, _ in chosen])
        )
        return joined, out


def _joined_column(lookup: LookupJoin, name: str, rows: np.ndarray, missing: np.ndarray) -> Any:
    dense = lookup.dense.get(name)
    column = dense.take(rows) if dense is not None else None
    if column is None:
        where = pa.array(rows, type=pa.int64(), mask=missing)
        column = lookup.columns.column(name).chunk(0).take(where)
    return column


def scan_schema(scan: Scan, arrow: pa.Schema) -> StructType | None:
    """The Spark schema a scan of `scan`'s table gives its columns (named `table__column`),
    worked out from the planner's Arrow schema of the table without a Spark frame: only where
    every type reads the same in Spark and pyarrow (signed integers, floats, booleans, strings,
    and lists and structs of them), nullable as file scans are; None otherwise."""
    names = list(scan.columns) if scan.columns is not None else list(arrow.names)
    if any(n not in arrow.names for n in names):
        return None
    written = _spark_written(arrow) if scan.format == "parquet" else None
    if written is not None:  # Spark reads the schema it wrote into the files (UDTs and all)
        if any(n not in written.names for n in names):
            return None
        types = [_nullable(written[n].dataType) for n in names]
    elif all(_same_in_spark(arrow.field(n).type) for n in names):
        try:
            types = [_nullable(from_arrow_type(arrow.field(n).type)) for n in names]
        except (TypeError, NotImplementedError):
            return None
    else:
        return None
    return StructType(
        [StructField(qualified(scan.table, n), t) for n, t in zip(names, types, strict=True)]
    )


SPARK_SCHEMA_KEY = b"org.apache.spark.sql.parquet.row.metadata"
"""Where Spark's Parquet writer records the Spark schema, which its reader then uses."""


def _spark_written(arrow: pa.Schema) -> StructType | None:
    raw = (arrow.metadata or {}).get(SPARK_SCHEMA_KEY)
    if raw is None:
        return None
    try:
        return StructType.fromJson(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def _nullable(kind: DataType) -> DataType:
    if isinstance(kind, StructType):
        return StructType([StructField(f.name, _nullable(f.dataType)) for f in kind.fields])
    if isinstance(kind, ArrayType):
        return ArrayType(_nullable(kind.elementType), containsNull=True)
    return kind


def _same_in_spark(kind: pa.DataType) -> bool:
    if pa.types.is_list(kind):
        return _same_in_spark(kind.value_type)
    if pa.types.is_struct(kind):
        return all(_same_in_spark(kind.field(i).type) for i in range(kind.num_fields))
    return bool(
        pa.types.is_signed_integer(kind)
        or pa.types.is_float32(kind)
        or pa.types.is_float64(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
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
