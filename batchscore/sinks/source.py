"""The Spark Python data source "batchscore_delta" and its reader: Delta tables through delta-rs.

Reading: `DeltaReader` lists the snapshot's live files (optionally only the partitions matching
the `partition_filters` option: the planner passes them, Spark's filter pushdown is not used),
groups them into input partitions and reads them with pyarrow as Arrow batches. Writing is the
writer's (sinks/writer.py): `DeltaDataSource.writer` hands it the options.

Options (all strings):
  path                 table location (required)
  write: mode          append | overwrite_partitions | overwrite (default: Spark's save mode)
  write: partition_by  JSON list or comma-separated column names (default: the table's own)
  write: app_id, app_version   idempotent writes (a Delta txn action)
  write: metadata      JSON object stored in the commit info
  write: read_version  the table version the write's decisions were based on (see WriteRequest)
  write: write_id      id put into file names and the commit info (default: random)
  write: overwrite_schema  "true": mode overwrite may replace the table's schema
  write: max_file_rows, max_file_bytes, row_group_rows   file sizing (defaults 1M, 128MB, 256k)
  write: transform, transform_sha256, transform_schema   a fused write: each task writes
         `transform(its batches)` instead of the batches themselves; transform is the path
         (relative to the table) of the pickled callable, checked against transform_sha256 before
         it is unpickled; transform_schema (base64 Arrow IPC) is what it yields and what the
         table gets (see sinks/transform.py; write_delta(transform=FusedTransform(...)) sets all
         three)
  read:  version, partition_filters (JSON [[col, op, value], ...]), columns (JSON list or
         comma-separated), split_bytes (default 128MB a task), min_partitions (spread small
         tables over at least this many tasks, file count permitting)
  read:  format   "parquet": read a folder of Parquet files (Hive partition folders) the way
         Spark's own reader does (sinks/parquet_folder.py), for object stores Spark has no
         Hadoop filesystem for; version and partition_filters do not apply
  both:  secret_storage_options   the driver's object-store options (JSON), for workers whose
         environment lacks them; set by read_delta / write_delta / register_view for
         object-store paths, activated around every step that touches storage
         (sinks/storage_config.py)
The write options are WriteRequest.to_options / from_options (sinks/request.py).

The classes live at module top level: executors import them by module name. The reader and the
writer are pickled at planning time, so everything they need travels in them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType

from batchscore.errors import SinkError, did_you_mean
from batchscore.sinks.options import SOURCE_NAME, int_option, name_list, required_path
from batchscore.sinks.parquet_folder import load_parquet_folder
from batchscore.sinks.schema import table_arrow_schema
from batchscore.sinks.snapshot import LiveFile, load_snapshot
from batchscore.sinks.spark_errors import marked
from batchscore.sinks.storage import filesystem, open_table, shared_tables
from batchscore.sinks.storage_config import decode_shipped, storage_scope
from batchscore.sinks.writer import DeltaArrowWriter, plan_write

SPLIT_BYTES = 128 * 1024 * 1024
READ_BATCH_ROWS = 64 * 1024


class DeltaDataSource(DataSource):
    """Spark data source "batchscore_delta": read and write Delta tables through delta-rs."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> StructType:
        with marked(), storage_scope(decode_shipped(self.options)):
            path = required_path(self.options)
            if _is_parquet(self.options):
                arrow = load_parquet_folder(path).schema
            else:
                version = int_option(self.options, "version", path)
                arrow = table_arrow_schema(open_table(path, version=version))
            columns = name_list(self.options.get("columns"))
            if columns is not None:
                arrow = _select(arrow, columns, path)
            result: StructType = from_arrow_schema(arrow, prefer_timestamp_ntz=True)
            return result

    def reader(self, schema: StructType) -> DeltaReader:
        with marked(), storage_scope(decode_shipped(self.options)):
            return DeltaReader(dict(self.options.items()), schema)

    def writer(self, schema: StructType, overwrite: bool) -> DeltaArrowWriter:
        with marked():
            storage = decode_shipped(self.options)
            with storage_scope(storage), shared_tables():  # its checks open the table once
                plan = plan_write(dict(self.options.items()), schema, overwrite)
            return DeltaArrowWriter(plan, storage=storage)


def _is_parquet(options: Mapping[str, str]) -> bool:
    fmt = (options.get("format") or "delta").strip().lower()
    if fmt not in ("delta", "parquet"):
        raise SinkError(
            f"batchscore_delta: option format={fmt!r} is not delta or parquet; pass one of them."
        )
    return fmt == "parquet"


def _select(schema: pa.Schema, columns: Sequence[str], path: str) -> pa.Schema:
    fields = []
    for name in columns:
        if name not in schema.names:
            raise SinkError(
                f"Delta table {path}: column '{name}' does not exist (columns: "
                f"{', '.join(schema.names)});{did_you_mean(name, schema.names)} fix `columns`."
            )
        fields.append(schema.field(name))
    return pa.schema(fields)


class DeltaFilesPartition(InputPartition):
    """A group of data files read by one Spark task: (relative path, partition values) pairs."""

    def __init__(self, index: int, files: list[tuple[str, dict[str, str | None]]]) -> None:
        super().__init__(index)
        self.files = files


class DeltaReader(DataSourceReader):
    """Reads one snapshot of a Delta table, planned when the reader is created."""

    def __init__(self, options: Mapping[str, str], schema: StructType) -> None:
        path = required_path(options)
        version = int_option(options, "version", path)
        filters_text = options.get("partition_filters")
        try:
            filters = json.loads(filters_text) if filters_text else None
        except ValueError:
            raise SinkError(
                f"Delta table {path}: option partition_filters is not JSON ({filters_text!r}); "
                'pass e.g. [["ds", "=", "2026-11-21"]].'
            ) from None
        snapshot = (
            load_parquet_folder(path)
            if _is_parquet(options)
            else load_snapshot(path, version=version, partition_filters=filters)
        )
        self.storage = decode_shipped(options)
        self.path = path
        self.version = snapshot.version
        self.partition_columns = list(snapshot.partition_columns)
        self.table_schema = snapshot.schema
        self.output_schema: pa.Schema = to_arrow_schema(schema, timezone="UTC")
        for name in self.output_schema.names:
            if name not in self.table_schema.names:
                raise SinkError(
                    f"{self._kind()} {path}: column '{name}' of the requested schema is not "
                    f"in the table{self._at()};"
                    f"{did_you_mean(name, self.table_schema.names)} fix the schema or columns."
                )
        self.files: list[LiveFile] = list(snapshot.files)
        split = int_option(options, "split_bytes", path) or SPLIT_BYTES
        wanted = int_option(options, "min_partitions", path) or 1
        total = sum(f.size for f in self.files)
        # Small tables still spread over `min_partitions` tasks; big ones go ~128MB a task.
        self.split_bytes = max(1, min(split, -(-total // max(wanted, 1))))

    def _at(self) -> str:
        return f" of version {self.version}" if self.version >= 0 else ""

    def _kind(self) -> str:
        return "Delta table" if self.version >= 0 else "Parquet table"

    def partitions(self) -> list[InputPartition]:
        groups: list[list[LiveFile]] = []
        current: list[LiveFile] = []
        current_bytes = 0
        for live in sorted(self.files, key=lambda f: f.path):
            if current and current_bytes + live.size > self.split_bytes:
                groups.append(current)
                current, current_bytes = [], 0
            current.append(live)
            current_bytes += live.size
        if current:
            groups.append(current)
        return [
            DeltaFilesPartition(i, [(f.path, dict(f.partition_values)) for f in group])
            for i, group in enumerate(groups)
        ]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        files = getattr(partition, "files", [])
        with storage_scope(getattr(self, "storage", {})):
            fs, base = filesystem(self.path)
        with marked():
            for rel, values in files:
                yield from self._read_file(fs, f"{base}/{rel}", values)

    def _read_file(
        self, fs: pafs.FileSystem, location: str, values: Mapping[str, str | None]
    ) -> Iterator[pa.RecordBatch]:
        out = self.output_schema
        try:
            handle = fs.open_input_file(location)
        except FileNotFoundError:
            raise SinkError(
                f"{self._kind()} {self.path}: data file {location}{self._at()} is missing "
                "(vacuumed or deleted); read a later version or restore the file."
            ) from None
        with handle:
            parquet = pq.ParquetFile(handle)
            present = set(parquet.schema_arrow.names)
            wanted = [
                name for name in out.names if name not in self.partition_columns and name in present
            ]
            for batch, rows in _batches(parquet, wanted):
                if rows == 0:
                    continue
                arrays = []
                for item in out:
                    if item.name in self.partition_columns:
                        arrays.append(_constant(values.get(item.name), item.type, rows))
                    elif item.name in present and batch is not None:
                        arrays.append(_conform(batch.column(item.name), item.type))
                    else:
                        arrays.append(pa.nulls(rows, item.type))
                yield pa.RecordBatch.from_arrays(arrays, schema=out)


def _batches(
    parquet: pq.ParquetFile, columns: list[str]
) -> Iterator[tuple[pa.RecordBatch | None, int]]:
    if columns:
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
            yield batch, batch.num_rows
        return
    remaining = parquet.metadata.num_rows
    while remaining > 0:
        rows = min(remaining, READ_BATCH_ROWS)
        remaining -= rows
        yield None, rows


def _conform(array: pa.Array, dtype: pa.DataType) -> pa.Array:
    return array if array.type.equals(dtype) else array.cast(dtype)


def _constant(value: str | None, dtype: pa.DataType, rows: int) -> pa.Array:
    if value is None:
        return pa.nulls(rows, dtype)
    if pa.types.is_boolean(dtype):
        scalar = pa.scalar(value.lower() == "true", pa.bool_())
    else:
        scalar = pa.scalar(value, pa.string()).cast(dtype)
    return pa.repeat(scalar, rows)
