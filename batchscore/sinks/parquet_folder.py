"""A folder of Parquet files (Hive-style `column=value` partition folders) as Spark reads it,
for the data source's reader where Spark cannot open the files itself.

The pyspark wheel has no Hadoop filesystem for object stores (no hadoop-aws), so a Parquet
input on `s3://` is read by the project's reader (sinks/source.py, option `format: parquet`)
from this listing. It follows Spark's rules, so a job reads the same rows and types from a
local folder (Spark's reader) and from an object store (this one): names starting with `_` or
`.` are skipped, partition values come from the folder names (unescaped, Hive's null folder
is null), partition columns follow the data columns with the type Spark's partition discovery
infers (`inferred_partition_type`), and the data columns come from the first file. No Spark
here: the planner's catalog uses the type inference too.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from datetime import date

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchscore.errors import SinkError, first_line
from batchscore.sinks.snapshot import LiveFile, Snapshot
from batchscore.sinks.storage import HIVE_NULL, filesystem

UNVERSIONED = -1
"""The Snapshot version of a Parquet folder (it has none)."""
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_ARROW_TYPES = {
    "long": pa.int64(),
    "double": pa.float64(),
    "date": pa.date32(),
    "string": pa.string(),
}


def inferred_partition_type(values: Iterable[str | None]) -> str:
    """The type Spark's partition discovery gives a Parquet table's partition column holding
    `values` (spark.sql.sources.partitionColumnTypeInference): long when every value is an
    integer, double when every value is a number, date when every value is an ISO date, else
    string (nulls do not count)."""
    present = [v for v in values if v is not None]
    if not present:
        return "string"
    if all(_INTEGER.match(v) for v in present):
        return "long"
    if all(_NUMBER.match(v) for v in present):
        return "double"
    if all(_DATE.match(v) for v in present):
        try:
            for v in present:
                date.fromisoformat(v)
        except ValueError:
            return "string"
        return "date"
    return "string"


def load_parquet_folder(path: str) -> Snapshot:
    """The folder's files, partition values and schema (version UNVERSIONED); SinkError naming
    the folder and the fix when it holds no Parquet file or cannot be listed."""
    fs, base = filesystem(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
    except OSError as exc:
        raise SinkError(
            f"Parquet table {path} cannot be listed ({first_line(exc)}); check the path and "
            "the storage credentials."
        ) from None
    files: list[LiveFile] = []
    for info in sorted(infos, key=lambda i: i.path):
        rel = info.path[len(base) :].lstrip("/")
        if info.type != pafs.FileType.File or any(p.startswith(("_", ".")) for p in rel.split("/")):
            continue
        files.append(LiveFile(rel, int(info.size or 0), _partition_values(rel), None))
    if not files:
        raise SinkError(f"Parquet table {path} holds no Parquet file; check the path.")
    columns = list(files[0].partition_values)
    for live in files:
        if list(live.partition_values) != columns:
            raise SinkError(
                f"Parquet table {path}: file {live.path} lies in partition folders "
                f"{list(live.partition_values)} but {files[0].path} in {columns}; give every "
                "file the same partition columns."
            )
    with fs.open_input_file(f"{base}/{files[0].path}") as handle:
        data_schema = pq.ParquetFile(handle).schema_arrow
    fields = [f for f in data_schema if f.name not in columns]
    for name in columns:
        kind = inferred_partition_type(f.partition_values.get(name) for f in files)
        fields.append(pa.field(name, _ARROW_TYPES[kind]))
    return Snapshot(path, UNVERSIONED, pa.schema(fields), columns, files)


def _partition_values(rel: str) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for segment in rel.split("/")[:-1]:
        name, sep, value = segment.partition("=")
        if not sep:
            continue
        text = urllib.parse.unquote(value)
        values[urllib.parse.unquote(name)] = None if text in (HIVE_NULL, "") else text
    return values
