"""Writes without a Python transform go through Spark's own Parquet writer; delta-rs commits.

The data source (sinks/writer.py) sends every row from the JVM to a Python worker as Arrow and
encodes Parquet there. For a DataFrame computed entirely in the JVM (quarantined rows, user
data, the bench's constant-score bound) that transfer is the whole cost over Spark's own writer
(0.12 s per 400k narrow rows against 0.01 s). Here Spark writes the files into a staging folder
under the table (`_batchscore/staging/<write id>`, hidden from Delta readers and vacuum); the
driver then moves each file into the table's partition folder under the sink's own name, its
ownership marker written first (as a write task does), builds its add action from the file's
own footer, and makes the same one commit as the data source (sinks/commit.py): idempotency,
conflict checks, partition overwrites and cleanup on failure are the same code.

Taken only where the result is the same table the data source would write:
- a table at a local path Hadoop parses as written, and a classic Spark session (moves are
  renames; a Spark Connect client may not see the server's files);
- no fused transform, and the default file sizing (Spark sizes row groups in bytes, not rows);
- the sink partitions only by strings, dates, integers and booleans (schema.is_partition_type):
  Spark names their folders with the same text as Delta's partition values, so the values are
  read back exactly;
- every file's column types, as Spark wrote them, read back as the write's types (each file is
  checked before anything is committed; a mismatch is a SinkError and nothing is committed).

A float column holding a NaN gets no min/max in a file's statistics (Delta's data skipping
must never skip a file with a matching row): the data source's tasks see the NaN in the data;
here the footer shows it, as parquet-java records a NaN as the row group's max (a test pins
that).

BATCHSCORE_NATIVE_WRITE=0 sends every write through the data source.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from batchscore.errors import SinkError
from batchscore.sinks.commit import FileAdd, commit_files
from batchscore.sinks.file_stats import FileStats, indexed_columns
from batchscore.sinks.ownership import STAGING_DIR, delete_files, write_marker
from batchscore.sinks.request import DEFAULT_SIZING, WritePlan, WriteRequest
from batchscore.sinks.snapshot import partition_string
from batchscore.sinks.storage import (
    HIVE_NULL,
    PLAIN_PATH,
    filesystem,
    is_object_store,
    normalize_path,
    partition_dir,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

ENV = "BATCHSCORE_NATIVE_WRITE"
WRITER = "spark-parquet"
"""What the commit info's `batchscore.writer` says for these writes."""
TIMESTAMP_CONF = "spark.sql.parquet.outputTimestampType"
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def native_write_enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def spark_can_write(df: DataFrame, request: WriteRequest) -> bool:
    """Whether Spark's writer may write `request` (see the module doc)."""
    from batchscore.physical.connect import is_connect

    path = request.path
    return (
        native_write_enabled()
        and request.transform is None
        and not is_object_store(path)
        and bool(PLAIN_PATH.match(normalize_path(path)))
        and request.sizing == DEFAULT_SIZING
        and not is_connect(df.sparkSession)
    )


def write_with_spark(df: DataFrame, plan: WritePlan) -> None:
    """Write `df` with Spark's Parquet writer and commit its files once. Nothing is committed
    for no rows, or when the app transaction had committed already; the files are gone then,
    as after any failure."""
    if plan.skip:
        return
    _, base = filesystem(plan.path)
    staging = f"{base}/{STAGING_DIR}/{plan.write_id}"
    moved: list[str] = []
    try:
        _spark_write(df, plan, staging)
        files = list(_move_into_table(plan, staging, moved))
    except BaseException:
        delete_files(plan.path, moved)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(staging))  # when no other write is staging
    commit_files(plan, files, writer=WRITER)


def _spark_write(df: DataFrame, plan: WritePlan, staging: str) -> None:
    spark = df.sparkSession
    before = spark.conf.get(TIMESTAMP_CONF, None)
    spark.conf.set(TIMESTAMP_CONF, "TIMESTAMP_MICROS")  # Delta's timestamps; Spark's default INT96
    try:
        writer = df.write.mode("overwrite").option("compression", "snappy")
        writer = writer.option("maxRecordsPerFile", plan.request.sizing.max_file_rows)
        if plan.partition_by:
            writer = writer.partitionBy(*plan.partition_by)
        writer.parquet("file://" + staging)
    finally:
        if before is None:
            spark.conf.unset(TIMESTAMP_CONF)
        else:
            spark.conf.set(TIMESTAMP_CONF, before)


def _move_into_table(plan: WritePlan, staging: str, moved: list[str]) -> Iterator[FileAdd]:
    """Each staged data file moved to its partition folder as the sink names files, checked
    and described; `moved` collects the table-relative paths as they land (for cleanup)."""
    fs, base = filesystem(plan.path)
    columns = indexed_columns(plan.file_schema, plan.table_configuration)
    for root, _, names in os.walk(staging):
        for name in sorted(names):
            if name.startswith(("_", ".")) or not name.endswith(".parquet"):
                continue
            staged = os.path.join(root, name)
            footer = pq.read_metadata(staged)
            if footer.num_rows == 0:
                continue  # Spark writes one empty file for an empty unpartitioned frame
            _check_file_schema(plan, footer.schema.to_arrow_schema(), staged)
            values = _partition_values(plan, os.path.relpath(root, staging))
            folder = "/".join(partition_dir(c, v) for c, v in values.items())
            file_name = f"part-{plan.write_id}-{uuid.uuid4().hex}.snappy.parquet"
            rel = f"{folder}/{file_name}" if folder else file_name
            write_marker(fs, base, rel)
            os.makedirs(os.path.dirname(f"{base}/{rel}"), exist_ok=True)
            os.replace(staged, f"{base}/{rel}")
            moved.append(rel)
            info = os.stat(f"{base}/{rel}")
            stats = FileStats(plan.file_schema, columns)
            yield FileAdd(
                path=rel,
                size=info.st_size,
                partition_values=values,
                modification_time=info.st_mtime_ns // 1_000_000,
                stats=stats.to_json(footer),
                rows=footer.num_rows,
            )


def _partition_values(plan: WritePlan, folder: str) -> dict[str, str | None]:
    """Delta partition values from Spark's `col=value/...` folders (Spark escapes each special
    ASCII character as %XX and writes null as HIVE_NULL)."""
    parts = [] if folder in ("", ".") else folder.split(os.sep)
    names = [p.split("=", 1)[0] for p in parts]
    if [_unescape(n) for n in names] != list(plan.partition_by):
        raise SinkError(
            f"Delta table {plan.path}: Spark wrote a file under '{folder}', not under folders "
            f"of the partition columns {list(plan.partition_by)}; nothing was committed. "
            f"Set {ENV}=0 to write through the data source instead."
        )
    values: dict[str, str | None] = {}
    for column, part in zip(plan.partition_by, parts, strict=True):
        text = part.split("=", 1)[1]
        raw = None if text == HIVE_NULL else _unescape(text)
        values[column] = partition_string(_typed(raw, plan.schema.field(column).type))
    return values


def _typed(raw: str | None, kind: pa.DataType) -> object:
    """The folder's text as the value the data source's writer would have seen."""
    if raw is None or pa.types.is_string(kind):
        return raw
    if pa.types.is_boolean(kind):
        return raw.lower() == "true"
    if pa.types.is_date32(kind):
        return pa.scalar(raw).cast(pa.date32()).as_py()
    return int(raw)


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def _check_file_schema(plan: WritePlan, written: pa.Schema, staged: str) -> None:
    expected = {f.name: _loose(f.type) for f in plan.file_schema}
    found = {f.name: _loose(f.type) for f in written}
    if found != expected:
        differ = sorted(
            n for n in expected.keys() | found.keys() if found.get(n) != expected.get(n)
        )
        raise SinkError(
            f"Delta table {plan.path}: Spark's Parquet writer wrote columns {differ} as "
            f"{[str(found.get(n)) for n in differ]} instead of "
            f"{[str(expected.get(n)) for n in differ]} ({os.path.basename(staged)}); nothing "
            f"was committed. Set {ENV}=0 to write through the data source instead."
        )


def _loose(kind: pa.DataType) -> pa.DataType:
    """`kind` without what Parquet readers do not keep: child field names and nullability."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return pa.list_(_loose(kind.value_type))
    if pa.types.is_map(kind):
        return pa.map_(_loose(kind.key_type), _loose(kind.item_type))
    if pa.types.is_struct(kind):
        return pa.struct([pa.field(f.name, _loose(f.type)) for f in _fields(kind)])
    return kind


def _fields(kind: pa.StructType) -> Sequence[pa.Field]:
    return [kind.field(i) for i in range(kind.num_fields)]
