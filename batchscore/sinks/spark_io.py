"""The Spark entry points to Delta tables: `write_delta`, `read_delta` and `register_view`.

Each goes through the project's data source "batchscore_delta" (sinks/source.py), so no Delta
JAR is needed. Before Spark runs anything, the driver checks what it can without Spark (the
write's schema against the table, partition filters, column names, whether an idempotent write
already committed) and fails with a plain error; errors raised inside the data source come back
through Spark's exception wrapping as themselves (sinks/spark_errors.py). Spark is imported
lazily, so this module (and `batchscore.sinks`) imports in a plain Python process.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from batchscore.errors import SinkError, did_you_mean
from batchscore.sinks.log import (
    current_version,
    find_commit,
    sink_facts,
    transaction_version,
)
from batchscore.sinks.options import SOURCE_NAME
from batchscore.sinks.request import WriteRequest, new_write_id
from batchscore.sinks.schema import (
    add_columns,
    check_schema_compatible,
    table_arrow_schema,
    table_partition_columns,
)
from batchscore.sinks.snapshot import filters_json, partition_selection, partition_types
from batchscore.sinks.spark_errors import unwrapped
from batchscore.sinks.storage import (
    is_delta_table,
    normalize_path,
    not_a_table,
    open_table,
    storage_options,
)
from batchscore.sinks.storage_config import encode_shipped
from batchscore.sinks.transform import (
    FusedTransform,
    TransformRef,
    remove_transform,
    store_transform,
    with_null_columns,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CommitReason = Literal["committed", "empty", "already_committed"]


@dataclass(frozen=True)
class CommitResult:
    """What write_delta did: committed (False for an empty write or an idempotent rerun), the
    new table version, the files and rows it added, and why (reason: "committed", "empty" when
    no rows were written, "already_committed" when app_id had committed app_version already)."""

    committed: bool
    version: int | None
    files: int = 0
    rows: int = 0
    write_id: str = ""
    mode: str = "append"
    metadata: dict[str, Any] = field(default_factory=dict)
    reason: CommitReason = "committed"


def write_delta(
    df: DataFrame, request: WriteRequest | str | os.PathLike[str], /, **fields: Any
) -> CommitResult:
    """Write `df` to a Delta table in ONE commit, as `request` says (see WriteRequest), through
    the batchscore_delta source. `write_delta(df, path, mode=..., ...)` is shorthand for
    `write_delta(df, WriteRequest(path, mode=..., ...))`.

    schema_policy.evolve_schema: the columns `df` adds are added to the table in a metadata-only
    commit just before the data commit (the data source's planning checks the schema before the
    data commit could carry a schema change). schema_policy.fill_missing: the table's columns it
    accepts that `df` lacks are written as nulls. A fused write (transform=FusedTransform(f,
    schema)): each write task applies `f` (a picklable `Iterator[RecordBatch] ->
    Iterator[RecordBatch]`, e.g. the scoring task) to its batches of `df` and writes what it
    yields, of `schema`, which is then the written schema: the transform's output never goes
    through the JVM. The transform reaches executors as a file under the table (see
    sinks/transform.py), deleted when the write ends, committed or not.
    """
    if not isinstance(request, WriteRequest):
        request = WriteRequest(normalize_path(request), **fields)
    elif fields:
        raise TypeError(f"write_delta(df, request) takes no keywords, got {sorted(fields)}")
    path = request.path
    fused = request.transform
    if isinstance(fused, TransformRef):
        raise SinkError(
            f"Delta table {path}: write_delta stores the transform itself; pass "
            "transform=FusedTransform(function, schema)."
        )
    if request.read_version is None:
        request = replace(request, read_version=current_version(path))
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow_schema = to_arrow_schema(df.schema, timezone="UTC") if fused is None else fused.schema
    diff = check_schema_compatible(
        path, arrow_schema, partition_by=request.partition_by, policy=request.schema_policy
    )
    app = request.app
    if app is not None:
        done = transaction_version(path, app.app_id)
        if done is not None and done >= app.version:
            return CommitResult(
                committed=False, version=None, mode=request.mode, reason="already_committed"
            )
    if diff.missing and fused is not None:
        table_schema = table_arrow_schema(open_table(path))
        missing = [table_schema.field(n) for n in diff.missing]
        fused = FusedTransform(*with_null_columns(fused.function, fused.schema, missing))
    elif diff.missing:
        df = _with_null_columns(df, path, list(diff.missing))
    if diff.added:
        add_columns(path, arrow_schema, metadata=request.metadata)
    write_id = request.write_id or new_write_id()
    stored = (
        None if fused is None else store_transform(path, write_id, fused.function, fused.schema)
    )
    options = replace(request, write_id=write_id, transform=stored).to_options()
    options.update(encode_shipped(storage_options(path) or {}))
    try:
        with unwrapped():
            _write(df, request, options)
    finally:
        if stored is not None:
            remove_transform(path, stored)
    version = find_commit(path, write_id)
    if version is None:
        reason: CommitReason = "empty"
        if app is not None:
            done = transaction_version(path, app.app_id)
            if done is not None and done >= app.version:
                reason = "already_committed"
        return CommitResult(
            committed=False, version=None, write_id=write_id, mode=request.mode, reason=reason
        )
    facts = sink_facts(path, version)
    return CommitResult(
        committed=True,
        version=version,
        files=int(facts.get("files", 0)),
        rows=int(facts.get("rows", 0)),
        write_id=write_id,
        mode=request.mode,
        metadata=dict(request.metadata or {}),
    )


def _write(df: DataFrame, request: WriteRequest, options: dict[str, str]) -> None:
    """Spark's own Parquet writer where it writes the same table (sinks/spark_writer.py), else
    the batchscore_delta data source; either makes one commit."""
    from batchscore.sinks.spark_writer import spark_can_write, write_with_spark
    from batchscore.sinks.writer import plan_write

    overwrite = request.mode == "overwrite"
    if spark_can_write(df, request):
        write_with_spark(df, plan_write(options, df.schema, overwrite))
        return
    mode = "overwrite" if overwrite else "append"
    df.write.format(SOURCE_NAME).mode(mode).options(**options).save()


def _with_null_columns(df: DataFrame, path: str, names: Sequence[str]) -> DataFrame:
    """`df` plus the table's columns `names`, as typed nulls (so the files carry every column)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    table_schema = table_arrow_schema(open_table(path))
    spark_types = from_arrow_schema(
        pa.schema([table_schema.field(n) for n in names]), prefer_timestamp_ntz=True
    )
    return df.select("*", *(F.lit(None).cast(f.dataType).alias(f.name) for f in spark_types.fields))


def read_delta(
    spark: SparkSession,
    path: str | os.PathLike[str],
    *,
    version: int | None = None,
    partition_filters: Sequence[Any] | None = None,
    columns: Sequence[str] | None = None,
) -> DataFrame:
    """A FRESH DataFrame over the Delta table at `path` (a new scan plan on every call).

    version: time travel. partition_filters: [(column, op, value), ...] on partition columns,
    applied when listing files (see snapshot.partition_selection). columns: read only these
    columns, in this order.
    """
    table_path = normalize_path(path)
    # Fail here, on the driver, with a plain error rather than at the first action, wrapped.
    table = open_table(table_path, version=version)
    schema = table_arrow_schema(table)
    if partition_filters:
        types = partition_types(schema, table_partition_columns(table))
        partition_selection(table_path, partition_filters, types)
    if columns is not None:
        for name in columns:
            if name not in schema.names:
                raise SinkError(
                    f"Delta table {table_path}: column '{name}' does not exist (columns: "
                    f"{', '.join(schema.names)});{did_you_mean(name, schema.names)} fix `columns`."
                )
    del table
    values = {
        "path": table_path,
        "version": version,
        "partition_filters": None
        if not partition_filters
        else json.dumps(filters_json(partition_filters)),
        "columns": None if columns is None else json.dumps(list(columns)),
        "min_partitions": _default_parallelism(spark),
    }
    options = {key: str(value) for key, value in values.items() if value is not None}
    options.update(encode_shipped(storage_options(table_path) or {}))
    with unwrapped():
        return spark.read.format(SOURCE_NAME).options(**options).load()


def read_parquet_folder(spark: SparkSession, path: str | os.PathLike[str]) -> DataFrame:
    """A folder of Parquet files (Hive partition folders) through the project's reader, as
    Spark's own reader would give it (sinks/parquet_folder.py): for object stores that Spark
    has no Hadoop filesystem for."""
    table_path = normalize_path(path)
    options = {"path": table_path, "format": "parquet"}
    parallelism = _default_parallelism(spark)
    if parallelism is not None:
        options["min_partitions"] = str(parallelism)
    options.update(encode_shipped(storage_options(table_path) or {}))
    with unwrapped():
        return spark.read.format(SOURCE_NAME).options(**options).load()


def _default_parallelism(spark: SparkSession) -> int | None:
    """How many tasks a small table is spread over; None (the reader decides) when unknown.
    physical/connect.py answers for classic and Spark Connect sessions alike."""
    from batchscore.physical.connect import default_parallelism

    try:
        return default_parallelism(spark)
    except Exception:
        return None


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def register_view(
    spark: SparkSession,
    name: str,
    path: str | os.PathLike[str],
    *,
    version: int | None = None,
    global_view: bool = False,
) -> None:
    """CREATE OR REPLACE [GLOBAL] TEMPORARY VIEW `name` over the table (catalog tables do not
    get their options passed to Python data sources in Spark 4, so views are the SQL route).

    A view's scan is planned once: re-register it after the table gets a new version.
    """
    table_path = normalize_path(path)
    if not _IDENTIFIER.match(name):
        raise SinkError(
            f"Delta table {table_path}: view name '{name}' is not a plain identifier; use "
            "letters, digits and underscores, starting with a letter."
        )
    if not is_delta_table(table_path):
        raise not_a_table(table_path)
    shipped = encode_shipped(storage_options(table_path) or {})
    if shipped:  # never in SQL text (logged, shown by SHOW CREATE): a DataFrame view instead
        _register_frame_view(spark, name, table_path, shipped, version, global_view)
        return
    options = [f"path {_sql_string(table_path)}"]
    if version is not None:
        options.append(f"version {_sql_string(str(int(version)))}")
    kind = "GLOBAL TEMPORARY" if global_view else "TEMPORARY"
    statement = (
        f"CREATE OR REPLACE {kind} VIEW `{name}` USING {SOURCE_NAME} OPTIONS ({', '.join(options)})"
    )
    with unwrapped():
        spark.sql(statement)


def _register_frame_view(
    spark: SparkSession,
    name: str,
    table_path: str,
    shipped: dict[str, str],
    version: int | None,
    global_view: bool,
) -> None:
    """The view of an object-store table, whose options carry storage settings: made from a
    DataFrame, so they stay out of any SQL text."""
    options = {"path": table_path, **shipped}
    if version is not None:
        options["version"] = str(int(version))
    with unwrapped():
        frame = spark.read.format(SOURCE_NAME).options(**options).load()
        if global_view:
            frame.createOrReplaceGlobalTempView(name)
        else:
            frame.createOrReplaceTempView(name)


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
