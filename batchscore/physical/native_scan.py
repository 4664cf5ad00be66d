"""Delta tables read by Spark's own Parquet reader, from the file list delta-rs gives.

The project's Delta reader is a Python data source: every row goes Parquet -> pyarrow (Python
worker) -> Arrow -> JVM before the join, and then to the writer's Python worker for scoring:
two wide Arrow transfers where Spark's vectorised Parquet reader needs none. Both readers refuse
what they cannot honour (deletion vectors, column mapping: `check_table_features`), so Spark's
reader is used whenever the files are on a filesystem Spark can open and the partition values
can be attached exactly:

- the live files (and partition values) come from the table's snapshot at the planned version,
  with the planner's partition filters applied by the same code as the Python reader's;
- partition values are not read from folder names (Delta does not require Hive folders, and
  their escaping differs between writers): files are grouped by their partition values, each
  group is read with its values as typed literals, and the groups are unioned. More than
  MAX_GROUPS groups keep the Python reader (a plan with hundreds of unions costs more than the
  transfer it saves);
- object-store URIs (s3://, ...) keep the Python reader unless Spark has a Hadoop filesystem
  for the scheme (`spark_can_open` asks the JVM once per scheme), which the pyspark wheel does
  not ship. The same test picks the reader of Parquet inputs (plain `spark.read.parquet` or
  the project's reader, sinks/parquet_folder.py).

`BATCHSCORE_NATIVE_SCAN=0` turns it off (the Python reader for every Delta scan).
"""

from __future__ import annotations

import functools
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_type
from pyspark.sql.types import StructField, StructType

from batchscore.physical.frames import project
from batchscore.sinks.snapshot import Snapshot, load_snapshot
from batchscore.sinks.storage import PLAIN_PATH, is_object_store, normalize_path, scheme

ENV = "BATCHSCORE_NATIVE_SCAN"
MAX_GROUPS = 64
_HADOOP_SCHEMES: dict[tuple[int, str], bool] = {}
"""(id of the JVM's SparkContext, scheme) -> whether Hadoop has a filesystem for it."""
_NEVER = "\x00batchscore: never a partition value"


def native_scan_enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def read_delta_native(
    spark: SparkSession,
    path: str,
    *,
    version: int | None,
    partition_filters: Sequence[object] | None,
    columns: Sequence[str] | None,
    split: int = 1,
) -> DataFrame | None:
    """The table through Spark's Parquet reader, or None when the Python reader must do it.
    `split` > 1: read as that many copies of each file's rows (see `split_rows`); None where
    that cannot be done."""
    if not native_scan_enabled():
        return None
    table_path = normalize_path(path)
    if not spark_can_open(spark, table_path):
        return None
    snap = load_snapshot(table_path, version=version, partition_filters=partition_filters)
    if not snap.files:
        return None  # the Python reader yields an empty, correctly typed frame
    wanted = list(columns) if columns is not None else list(snap.schema.names)
    parts = [c for c in wanted if c in snap.partition_columns]
    data = [c for c in wanted if c not in snap.partition_columns]
    groups = _groups(snap, parts)
    if len(groups) > MAX_GROUPS or not all(PLAIN_PATH.match(f.path) for f in snap.files):
        return None
    try:
        schema = _spark_schema(snap.schema, data)
        part_types = {c: from_arrow_type(snap.schema.field(c).type) for c in parts}
    except (TypeError, NotImplementedError):
        return None  # an Arrow type Spark's reader has no equivalent for
    frames = []
    for values, files in groups.items():
        df = spark.read.schema(schema).parquet(*(_file_uri(table_path, f) for f in files))
        split_df = split_rows(df, split, schema.names)
        if split_df is None:
            return None
        df = split_df
        typed = {c: _literal(v, part_types[c], c) for c, v in zip(parts, values, strict=True)}
        frames.append(project(df.withColumns(typed) if typed else df, wanted))
    return functools.reduce(DataFrame.unionByName, frames)


ROW_INDEX = "_metadata.row_index"
"""The row's position in its Parquet file, which Spark's file readers give (Spark >= 3.5)."""


def split_rows(df: DataFrame, parts: int, columns: Sequence[str] | None = None) -> DataFrame | None:
    """`df`, a scan by Spark's Parquet reader, as `parts` unioned copies, copy i keeping the rows
    at positions i modulo `parts` of their files: one task per copy and file, with no shuffle.
    Rows are where they are in the files, so a retried task reads exactly the same rows. None
    when `df` has a `_metadata` column, which hides the reader's row positions. `columns`: the
    scan's columns where the caller knows them (asking Spark is a round trip to the JVM)."""
    if parts <= 1:
        return df
    if "_metadata" in (df.schema.names if columns is None else columns):
        return None
    position = F.pmod(F.col(ROW_INDEX), F.lit(parts))
    copies = [df.filter(position == i) for i in range(parts)]
    return functools.reduce(DataFrame.union, copies)


def surely_fewer_tasks(spark: SparkSession, sizes: Sequence[int], tasks: int) -> bool:
    """Whether Spark's file scan surely reads files of `sizes` bytes as fewer than `tasks`
    tasks, known without planning it: a file is cut into splits of at least the smaller of
    spark.sql.files.maxPartitionBytes and openCostInBytes (Spark's split size is the former,
    capped below by the latter or more), and a task reads one split or more."""
    smallest = min(
        _conf_bytes(spark, "spark.sql.files.maxPartitionBytes"),
        _conf_bytes(spark, "spark.sql.files.openCostInBytes"),
    )
    if smallest <= 0:
        return False
    return sum(-(-size // smallest) for size in sizes) < tasks


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_BYTES = re.compile(r"^\s*(\d+)\s*([kmgtp]?)b?\s*$", re.IGNORECASE)


def _conf_bytes(spark: SparkSession, key: str) -> int:
    """A byte-size setting as Spark reads it ("128m", "4194304b", "134217728"); 0 when it
    cannot be read."""
    try:
        value = str(spark.conf.get(key))
    except Exception:
        return 0
    match = _BYTES.match(value)
    if match is None:
        return 0
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _literal(value: str | None, spark_type: Any, name: str) -> Any:
    """A partition value as a typed column, nullable like the Python reader's column (a bare
    literal is NOT NULL, which would change the output table's schema)."""
    if value is None:
        return F.lit(None).cast(spark_type).alias(name)
    nullable = F.nullif(F.lit(value), F.lit(_NEVER))  # CASE WHEN true ... is folded to NOT NULL
    return nullable.cast(spark_type).alias(name)


def spark_can_open(spark: SparkSession, path: str) -> bool:
    """Whether Spark's own readers can open files at `path`: local paths always; object-store
    URIs when the JVM has a Hadoop filesystem for the scheme (never over Spark Connect, whose
    client cannot ask)."""
    if not is_object_store(path):
        return True
    name = scheme(path)
    try:
        jsc = spark.sparkContext._jsc
        key = (id(jsc), name)
        if key not in _HADOOP_SCHEMES:
            hadoop = spark.sparkContext._jvm.org.apache.hadoop.fs.FileSystem  # type: ignore[union-attr]
            try:
                hadoop.getFileSystemClass(name, jsc.hadoopConfiguration())
                _HADOOP_SCHEMES[key] = True
            except Exception:  # UnsupportedFileSystemException: no filesystem for the scheme
                _HADOOP_SCHEMES[key] = False
        return _HADOOP_SCHEMES[key]
    except Exception:  # a Spark Connect session has no JVM to ask
        return False


def _groups(snap: Snapshot, parts: list[str]) -> dict[tuple[str | None, ...], list[str]]:
    out: dict[tuple[str | None, ...], list[str]] = defaultdict(list)
    for f in snap.files:
        out[tuple(f.partition_values.get(c) for c in parts)].append(f.path)
    return dict(out)


def _spark_schema(schema: pa.Schema, names: list[str]) -> StructType:
    fields = []
    for name in names:
        field = schema.field(name)
        if pa.types.is_timestamp(field.type) and field.type.tz is None:
            raise TypeError("timestamp without time zone")  # Spark reads it as local time
        fields.append(StructField(name, from_arrow_type(field.type), field.nullable))
    return StructType(fields)


def _file_uri(table_path: str, relative: str) -> str:
    if is_object_store(table_path):
        return f"{table_path.rstrip('/')}/{relative}"
    base = table_path[len("file://") :] if table_path.startswith("file://") else table_path
    full = relative if os.path.isabs(relative) else os.path.join(base, relative)
    return "file://" + full
