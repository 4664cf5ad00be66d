"""The Spark Python data source "batchscore_delta": Delta tables read and written via delta-rs.

Writing: each Spark task (`DeltaArrowWriter.write`, on an executor) writes Parquet files with
pyarrow under Hive-style partition folders, partition columns left out of the files as Delta
requires, and returns their add actions in a `DeltaCommitMessage`. The driver-side `commit`
makes ONE Delta commit of all of them (`delta_table.commit_files`); `abort` deletes them. Before
a task creates a data file it writes the file's marker, `_batchscore/written/<file>.written`,
which is how vacuum knows the file is batchscore's even when no commit ever references it
(sinks/ownership.py).

Reading: `DeltaReader` lists the snapshot's live files (optionally only the partitions matching
the `partition_filters` option: the planner passes them, Spark's filter pushdown is not used),
groups them into input partitions and reads them with pyarrow as Arrow batches.

Options (all strings):
  path                 table location (required)
  write: mode          append | overwrite_partitions | overwrite (default: Spark's save mode)
  write: partition_by  JSON list or comma-separated column names (default: the table's own)
  write: app_id, app_version   idempotent writes (a Delta txn action)
  write: metadata      JSON object stored in the commit info
  write: write_id      id put into file names and the commit info (default: random)
  write: overwrite_schema  "true": mode overwrite may replace the table's schema
  write: max_file_rows, max_file_bytes, row_group_rows   file sizing (defaults 1M, 128MB, 256k)
  write: transform, transform_sha256, transform_schema   a fused write: each task writes
         `transform(its batches)` instead of the batches themselves; transform is the path
         (relative to the table) of the pickled callable, checked against transform_sha256 before
         it is unpickled; transform_schema (base64 Arrow IPC) is what it yields and what the
         table gets (see sinks/transform.py; write_delta(transform=...) sets all three)
  read:  version, partition_filters (JSON [[col, op, value], ...]), columns (JSON list or
         comma-separated), split_bytes (default 128MB a task), min_partitions (spread small
         tables over at least this many tasks, file count permitting)

The classes live at module top level: executors import them by module name. The writer object
is pickled at planning time, so everything `commit` needs travels in options and commit messages.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType

from batchscore.errors import BatchScoreError, SinkError, StepError, did_you_mean
from batchscore.sinks.delta_table import (
    SOURCE_NAME,
    WRITE_MODES,
    FileAdd,
    LiveFile,
    check_schema_compatible,
    commit_files,
    delete_files,
    delta_arrow_schema,
    filesystem,
    find_commit,
    is_delta_table,
    load_snapshot,
    mark_error,
    normalize_path,
    one_line,
    open_table,
    partition_dir,
    partition_string,
    table_arrow_schema,
    table_partition_columns,
    transaction_version,
    written_files,
)
from batchscore.sinks.encoding import choose_encoding
from batchscore.sinks.file_stats import FileStats, indexed_columns
from batchscore.sinks.ownership import WRITE_ID, write_marker
from batchscore.sinks.transform import (
    TASKS_DIR,
    BatchTransform,
    TransformRef,
    decode_schema,
    load_transform,
)

MAX_FILE_ROWS = 1_000_000
MAX_FILE_BYTES = 128 * 1024 * 1024
ROW_GROUP_ROWS = 256 * 1024
ROW_GROUP_BYTES = 64 * 1024 * 1024
TASK_BUFFER_BYTES = 256 * 1024 * 1024
SPLIT_BYTES = 128 * 1024 * 1024
READ_BATCH_ROWS = 64 * 1024


@contextmanager
def _marked() -> Iterator[None]:
    """Re-raise batchscore errors with the BATCHSCORE_ERROR marker, so the driver finds them."""
    try:
        yield
    except BatchScoreError as exc:
        raise mark_error(exc) from None


def _required_path(options: Mapping[str, str]) -> str:
    path = options.get("path")
    if not path:
        raise SinkError(
            "batchscore_delta: no table path given; pass .option('path', ...) or .save(path) / "
            ".load(path)."
        )
    return normalize_path(path)


def _name_list(text: str | None) -> list[str] | None:
    """A JSON list or comma-separated names; None when the option is absent."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("["):
        return [str(item) for item in json.loads(text)]
    return [part.strip() for part in text.split(",") if part.strip()]


class DeltaDataSource(DataSource):
    """Spark data source "batchscore_delta": read and write Delta tables through delta-rs."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> StructType:
        with _marked():
            path = _required_path(self.options)
            version = _int_option(self.options, "version", path)
            table = open_table(path, version=version)
            arrow = table_arrow_schema(table)
            columns = _name_list(self.options.get("columns"))
            if columns is not None:
                arrow = _select(arrow, columns, path)
            result: StructType = from_arrow_schema(arrow, prefer_timestamp_ntz=True)
            return result

    def reader(self, schema: StructType) -> DeltaReader:
        with _marked():
            return DeltaReader(dict(self.options.items()), schema)

    def writer(self, schema: StructType, overwrite: bool) -> DeltaArrowWriter:
        with _marked():
            return DeltaArrowWriter(_write_config(dict(self.options.items()), schema, overwrite))


def _int_option(options: Mapping[str, str], key: str, path: str) -> int | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise SinkError(
            f"Delta table {path}: option {key}={value!r} is not an integer; pass a whole number."
        ) from None


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


# --------------------------------------------------------------------------------------------
# reading


class DeltaFilesPartition(InputPartition):
    """A group of data files read by one Spark task: (relative path, partition values) pairs."""

    def __init__(self, index: int, files: list[tuple[str, dict[str, str | None]]]) -> None:
        super().__init__(index)
        self.files = files


class DeltaReader(DataSourceReader):
    """Reads one snapshot of a Delta table, planned when the reader is created."""

    def __init__(self, options: Mapping[str, str], schema: StructType) -> None:
        path = _required_path(options)
        version = _int_option(options, "version", path)
        filters_text = options.get("partition_filters")
        try:
            filters = json.loads(filters_text) if filters_text else None
        except ValueError:
            raise SinkError(
                f"Delta table {path}: option partition_filters is not JSON ({filters_text!r}); "
                'pass e.g. [["ds", "=", "2026-11-21"]].'
            ) from None
        snapshot = load_snapshot(path, version=version, partition_filters=filters)
        self.path = path
        self.version = snapshot.version
        self.partition_columns = list(snapshot.partition_columns)
        self.table_schema = snapshot.schema
        self.output_schema: pa.Schema = to_arrow_schema(schema, timezone="UTC")
        for name in self.output_schema.names:
            if name not in self.table_schema.names:
                raise SinkError(
                    f"Delta table {path}: column '{name}' of the requested schema is not in "
                    f"the table (version {self.version});"
                    f"{did_you_mean(name, self.table_schema.names)} fix the schema or columns."
                )
        self.files: list[LiveFile] = list(snapshot.files)
        split = _int_option(options, "split_bytes", path) or SPLIT_BYTES
        wanted = _int_option(options, "min_partitions", path) or 1
        total = sum(f.size for f in self.files)
        # Small tables still spread over `min_partitions` tasks; big ones go ~128MB a task.
        self.split_bytes = max(1, min(split, -(-total // max(wanted, 1))))

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
        fs, base = filesystem(self.path)
        with _marked():
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
                f"Delta table {self.path}: data file {location} of version {self.version} is "
                "missing (vacuumed or deleted); read a later version or restore the file."
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


# --------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class WriteConfig:
    """What the tasks and the commit need, fixed at planning time (pickled with the writer)."""

    path: str
    mode: str
    schema: pa.Schema
    """The full normalized Arrow schema the table gets (partition columns included)."""
    partition_by: tuple[str, ...]
    write_id: str
    app_id: str | None = None
    app_version: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    overwrite_schema: bool = False
    skip: bool = False
    """The app transaction was already committed when planning: write nothing."""
    max_file_rows: int = MAX_FILE_ROWS
    max_file_bytes: int = MAX_FILE_BYTES
    row_group_rows: int = ROW_GROUP_ROWS
    transform: TransformRef | None = None
    """A fused write: tasks write what this transform makes of their batches (schema: its own)."""
    table_configuration: dict[str, str | None] = field(default_factory=dict)
    """The existing table's configuration: which columns get file statistics follows it."""

    @property
    def file_schema(self) -> pa.Schema:
        return pa.schema([f for f in self.schema if f.name not in self.partition_by])


def _write_config(options: Mapping[str, str], schema: StructType, overwrite: bool) -> WriteConfig:
    path = _required_path(options)
    mode = (options.get("mode") or ("overwrite" if overwrite else "append")).strip().lower()
    if mode not in WRITE_MODES:
        raise SinkError(
            f"Delta table {path}: unknown write mode '{mode}'; use one of "
            f"{', '.join(WRITE_MODES)}.{did_you_mean(mode, WRITE_MODES)}"
        )
    overwrite_schema = (options.get("overwrite_schema") or "").strip().lower() == "true"
    if overwrite_schema and mode != "overwrite":
        raise SinkError(
            f"Delta table {path}: overwrite_schema needs mode 'overwrite'; change the mode or "
            "drop overwrite_schema."
        )
    transform = _transform_ref(options, path)
    # A fused write's table gets the transform's output schema; the DataFrame is its input.
    arrow = transform.schema if transform is not None else to_arrow_schema(schema, timezone="UTC")
    partition_by = _name_list(options.get("partition_by"))
    check_schema_compatible(
        path, arrow, partition_by=partition_by, overwrite_schema=overwrite_schema
    )
    existing = open_table(path) if is_delta_table(path) else None
    if partition_by is None:
        partition_by = table_partition_columns(existing) if existing is not None else []
    app_id = options.get("app_id") or None
    app_version = _int_option(options, "app_version", path)
    if (app_id is None) != (app_version is None):
        raise SinkError(
            f"Delta table {path}: options app_id and app_version go together; pass both or neither."
        )
    metadata: dict[str, Any] = {}
    if options.get("metadata"):
        try:
            loaded = json.loads(options["metadata"])
        except ValueError:
            loaded = None
        if not isinstance(loaded, dict):
            raise SinkError(
                f"Delta table {path}: option metadata must be a JSON object, got "
                f"{options['metadata'][:80]!r}; pass json.dumps({{...}})."
            )
        metadata = loaded
    skip = False
    if app_id is not None and app_version is not None:
        done = transaction_version(path, app_id)
        skip = done is not None and done >= app_version
    write_id = options.get("write_id") or uuid.uuid4().hex[:16]
    if not WRITE_ID.match(write_id):
        raise SinkError(
            f"Delta table {path}: option write_id={write_id[:80]!r} is not 1 to 64 letters, "
            "digits, '_' or '-'; it goes into file names, pass such an id or none."
        )
    return WriteConfig(
        path=path,
        mode=mode,
        schema=delta_arrow_schema(arrow, path=path),
        partition_by=tuple(partition_by),
        write_id=write_id,
        app_id=app_id,
        app_version=app_version,
        metadata=metadata,
        overwrite_schema=overwrite_schema,
        skip=skip,
        max_file_rows=_int_option(options, "max_file_rows", path) or MAX_FILE_ROWS,
        max_file_bytes=_int_option(options, "max_file_bytes", path) or MAX_FILE_BYTES,
        row_group_rows=_int_option(options, "row_group_rows", path) or ROW_GROUP_ROWS,
        transform=transform,
        table_configuration=dict(existing.metadata().configuration) if existing else {},
    )


def _transform_ref(options: Mapping[str, str], path: str) -> TransformRef | None:
    names = ("transform", "transform_sha256", "transform_schema")
    values = [options.get(name) or None for name in names]
    if all(v is None for v in values):
        return None
    rel, digest, schema = values
    if rel is None or digest is None or schema is None:
        raise SinkError(
            f"Delta table {path}: options {', '.join(names)} go together; pass all three "
            "(write_delta(transform=..., transform_schema=...) does) or none."
        )
    if not rel.startswith(TASKS_DIR + "/") or ".." in rel.split("/"):
        raise SinkError(
            f"Delta table {path}: option transform={rel!r} is not a task file under "
            f"{TASKS_DIR}/; pass the path write_delta stored."
        )
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise SinkError(
            f"Delta table {path}: option transform_sha256={digest[:80]!r} is not a sha256 hex "
            "digest; pass the 64 lowercase hex digits of the task file."
        )
    return TransformRef(rel, digest, decode_schema(schema, table_path=path))


@dataclass
class DeltaCommitMessage(WriterCommitMessage):
    """What one write task produced: its files (add actions) and row count."""

    files: list[FileAdd]
    rows: int


class DeltaArrowWriter(DataSourceArrowWriter):
    """Writes Parquet files per task; the driver makes one Delta commit of all of them."""

    def __init__(self, config: WriteConfig) -> None:
        self.config = config

    def write(self, iterator: Iterator[pa.RecordBatch]) -> DeltaCommitMessage:
        if self.config.skip:
            for _ in iterator:
                pass
            return DeltaCommitMessage(files=[], rows=0)
        task = _TaskWriter(self.config)
        try:
            with _marked():
                batches = _transformed(self.config, iterator)
                try:
                    for batch in batches:
                        task.add(batch)
                    files = task.finish()
                except OSError as exc:
                    raise SinkError(
                        f"Delta table {self.config.path}: writing a data file failed "
                        f"({str(exc).splitlines()[0]}); check that the path is writable and "
                        "has free space."
                    ) from None
        except BaseException:
            task.discard()
            raise
        return DeltaCommitMessage(files=files, rows=sum(f.rows for f in files))

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        config = self.config
        files = [f for m in messages if isinstance(m, DeltaCommitMessage) for f in m.files]
        with _marked():
            try:
                commit_files(
                    config.path,
                    files,
                    mode=config.mode,
                    schema=config.schema,
                    partition_by=config.partition_by,
                    write_id=config.write_id,
                    app_id=config.app_id,
                    app_version=config.app_version,
                    metadata=config.metadata,
                    overwrite_schema=config.overwrite_schema,
                )
            finally:
                _remove_strays(config, keep={f.path for f in files}, files=files)

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        config = self.config
        # Spark also aborts after a failed commit(): never delete files a commit references.
        try:
            if find_commit(config.path, config.write_id) is not None:
                return
        except Exception:
            return  # cannot tell: leaving orphans is harmless, deleting committed files is not
        files = [f for m in messages if isinstance(m, DeltaCommitMessage) for f in m.files]
        delete_files(config.path, [f.path for f in files])
        # Tasks that failed or were killed never sent a message; their files carry the write id.
        # Tasks being cancelled can still be finishing a file: sweep again after a moment.
        for delay in (0.0, 0.5, 1.0):
            time.sleep(delay)
            try:
                delete_files(config.path, written_files(config.path, config.write_id))
            except OSError:
                pass


def _transformed(
    config: WriteConfig, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """The task's own batches, or (fused write) what the transform makes of them."""
    if config.transform is None:
        return batches
    return _scored(load_transform(config.path, config.transform), batches)


def _scored(
    transform: BatchTransform, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Failures of the transform are a step's failure, not the sink's (an OSError in scoring
    must not read as "writing a data file failed")."""
    try:
        yield from transform(batches)
    except BatchScoreError:
        raise
    except Exception as exc:
        raise StepError(
            f"Step 'score' failed in a write task: {type(exc).__name__}: {one_line(str(exc))}"
        ) from exc


def _remove_strays(config: WriteConfig, *, keep: set[str], files: Sequence[FileAdd]) -> None:
    """Delete files of this write that are not part of the commit (failed or duplicate task
    attempts; all of them when the commit was skipped or failed), in the folders it touched."""
    try:
        committed = is_delta_table(config.path) and _committed(config)
        folders = {f.path.rsplit("/", 1)[0] if "/" in f.path else "" for f in files}
        found = written_files(config.path, config.write_id, folders=folders or [""])
        strays = [p for p in found if not committed or p not in keep]
        if strays:
            delete_files(config.path, strays)
    except Exception:
        pass


def _committed(config: WriteConfig) -> bool:
    return find_commit(config.path, config.write_id) is not None


class _OpenFile:
    """One partition value's current output file plus the batches buffered for it."""

    def __init__(self, key: tuple[str | None, ...]) -> None:
        self.key = key
        self.buffer: list[pa.RecordBatch] = []
        self.buffered_rows = 0
        self.buffered_bytes = 0
        self.rel: str | None = None
        self.stream: Any = None
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.stats: FileStats | None = None
        self.footers: list[pq.FileMetaData] = []


class _TaskWriter:
    """Buffers a task's batches per partition value and writes large Parquet files."""

    def __init__(self, config: WriteConfig) -> None:
        self.config = config
        self.fs, self.base = filesystem(config.path)
        self.file_schema = config.file_schema
        self.stats_columns = indexed_columns(self.file_schema, config.table_configuration)
        self.open: dict[tuple[str | None, ...], _OpenFile] = {}
        self.done: list[FileAdd] = []
        self.created: list[str] = []
        self.buffered_bytes = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        batch = self._conform(batch)
        parts = self.config.partition_by
        if not parts:
            self._append((), batch)
            return
        for key, piece in _split(batch, parts):
            self._append(key, piece.select(self.file_schema.names))

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        target = self.config.schema
        if batch.schema.equals(target):
            return batch
        if batch.schema.names != target.names:
            batch = batch.select(target.names)
        if all(a.type.equals(b.type) for a, b in zip(batch.schema, target, strict=True)):
            # Only nullability or metadata differ: relabel without touching the data.
            return pa.RecordBatch.from_arrays(batch.columns, schema=target)
        try:
            return batch.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SinkError(
                f"Delta table {self.config.path}: a batch of type {batch.schema.to_string()!r} "
                f"cannot be cast to the table's types ({str(exc).splitlines()[0]}); cast the "
                "columns before writing."
            ) from None

    def _append(self, key: tuple[str | None, ...], batch: pa.RecordBatch) -> None:
        entry = self.open.get(key)
        if entry is None:
            entry = self.open[key] = _OpenFile(key)
        entry.buffer.append(batch)
        entry.buffered_rows += batch.num_rows
        size = batch.nbytes
        entry.buffered_bytes += size
        self.buffered_bytes += size
        if (
            entry.buffered_rows >= self.config.row_group_rows
            or entry.buffered_bytes >= ROW_GROUP_BYTES
        ):
            self._flush(entry)
        while self.buffered_bytes > TASK_BUFFER_BYTES:
            self._flush(max(self.open.values(), key=lambda e: e.buffered_bytes))

    def _flush(self, entry: _OpenFile) -> None:
        if not entry.buffer:
            return
        table = pa.Table.from_batches(entry.buffer, schema=self.file_schema)
        self.buffered_bytes -= entry.buffered_bytes
        entry.buffer, entry.buffered_rows, entry.buffered_bytes = [], 0, 0
        start = 0
        while start < table.num_rows:
            room = self.config.max_file_rows - entry.rows
            piece = table.slice(start, room)
            if entry.writer is None:
                self._open_file(entry, piece)
            assert entry.writer is not None and entry.stats is not None
            entry.writer.write_table(piece, row_group_size=max(piece.num_rows, 1))
            entry.stats.observe(piece)
            entry.rows += piece.num_rows
            start += piece.num_rows
            if entry.rows >= self.config.max_file_rows or (
                entry.stream.tell() >= self.config.max_file_bytes
            ):
                self._close_file(entry)

    def _open_file(self, entry: _OpenFile, first: pa.Table) -> None:
        folder = "/".join(
            partition_dir(name, value)
            for name, value in zip(self.config.partition_by, entry.key, strict=True)
        )
        name = f"part-{self.config.write_id}-{uuid.uuid4().hex}.snappy.parquet"
        rel = f"{folder}/{name}" if folder else name
        location = f"{self.base}/{rel}"
        # The marker first: a task killed at any point leaves no data file vacuum could not
        # attribute to batchscore (sinks/ownership.py).
        write_marker(self.fs, self.base, rel)
        self.created.append(rel)
        entry.rel = rel
        parent = f"{self.base}/{folder}" if folder else self.base
        entry.stream = _open_output(self.fs, parent, location)
        encoding = choose_encoding(first)
        entry.footers = []
        entry.stats = FileStats(self.file_schema, self.stats_columns)
        # Parquet statistics where the Delta log states them (taken from this footer); on a
        # wide output of many models, string statistics alone were 12% of the write.
        entry.writer = pq.ParquetWriter(
            entry.stream,
            self.file_schema,
            use_dictionary=encoding.use_dictionary,
            compression=encoding.compression,
            write_statistics=list(entry.stats.kinds) or False,
            metadata_collector=entry.footers,
        )
        entry.rows = 0

    def _close_file(self, entry: _OpenFile) -> None:
        assert entry.writer is not None and entry.rel is not None and entry.stats is not None
        entry.writer.close()
        entry.stream.close()
        info = self.fs.get_file_info(f"{self.base}/{entry.rel}")
        mtime = info.mtime_ns // 1_000_000 if info.mtime_ns else int(time.time() * 1000)
        self.done.append(
            FileAdd(
                path=entry.rel,
                size=int(info.size),
                partition_values=dict(zip(self.config.partition_by, entry.key, strict=True)),
                modification_time=int(mtime),
                stats=entry.stats.to_json(entry.footers[-1]),
                rows=entry.rows,
            )
        )
        entry.writer, entry.stream, entry.rel, entry.stats, entry.rows = None, None, None, None, 0

    def finish(self) -> list[FileAdd]:
        for entry in list(self.open.values()):
            self._flush(entry)
            if entry.writer is not None:
                self._close_file(entry)
        self.open.clear()
        return list(self.done)

    def discard(self) -> None:
        """Close what is open and delete every file this task created."""
        for entry in self.open.values():
            for closer in (entry.writer, entry.stream):
                if closer is not None:
                    try:
                        closer.close()
                    except Exception:
                        pass
        self.open.clear()
        try:
            delete_files(self.config.path, self.created)
        except Exception:
            pass


def _open_output(fs: pafs.FileSystem, folder: str, location: str) -> Any:
    """A new file's output stream; its folder is (re)made when a cleanup removed it meanwhile
    (delete_files removes partition folders it emptied)."""
    for attempt in (1, 2):
        fs.create_dir(folder, recursive=True)
        try:
            return fs.open_output_stream(location)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _split(
    batch: pa.RecordBatch, parts: Sequence[str]
) -> Iterator[tuple[tuple[str | None, ...], pa.RecordBatch]]:
    """Slices of `batch` per distinct partition value (as Delta partition strings)."""
    columns = [batch.column(name) for name in parts]
    if all(pc.count_distinct(c, mode="all").as_py() == 1 for c in columns):
        yield tuple(partition_string(c[0].as_py()) for c in columns), batch
        return
    keys = (
        pa.Table.from_batches([batch.select(list(parts))])
        .group_by(list(parts), use_threads=False)
        .aggregate([])
    )
    for row in keys.to_pylist():
        mask: pa.Array | None = None
        for name, column in zip(parts, columns, strict=True):
            value = row[name]
            test = pc.is_null(column) if value is None else pc.equal(column, value)
            test = pc.fill_null(test, False)
            mask = test if mask is None else pc.and_(mask, test)
        assert mask is not None
        piece = batch.filter(mask)
        if piece.num_rows:
            yield tuple(partition_string(row[name]) for name in parts), piece


# --------------------------------------------------------------------------------------------
# file statistics
