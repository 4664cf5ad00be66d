"""The Parquet files of one write task: buffered per partition value, sized, marked, listed.

A task's batches are split by partition value and buffered; each partition's rows go to large
Parquet files under Hive-style partition folders (the partition columns left out of the files,
as Delta requires), sized by the request's FileSizing. Before a file is created its ownership
marker is written (sinks/ownership.py), so a task killed at any point leaves no data file
vacuum could not attribute to batchscore. Each closed file becomes a `FileAdd` (size, partition
values, statistics from its own footer) for the driver's one commit. No Spark here: a
`TaskWriter` is driven by the data source's writer on an executor, or directly by a test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchscore.errors import SinkError, first_line
from batchscore.sinks.commit import FileAdd
from batchscore.sinks.encoding import choose_encoding
from batchscore.sinks.file_stats import FileStats, indexed_columns
from batchscore.sinks.ownership import delete_files, write_marker
from batchscore.sinks.request import WritePlan
from batchscore.sinks.snapshot import partition_string
from batchscore.sinks.storage import filesystem, partition_dir

ROW_GROUP_BYTES = 64 * 1024 * 1024
TASK_BUFFER_BYTES = 256 * 1024 * 1024


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


class TaskWriter:
    """Buffers a task's batches per partition value and writes large Parquet files."""

    def __init__(self, plan: WritePlan) -> None:
        self.plan = plan
        self.sizing = plan.request.sizing
        self.fs, self.base = filesystem(plan.path)
        self.file_schema = plan.file_schema
        self.stats_columns = indexed_columns(self.file_schema, plan.table_configuration)
        self.open: dict[tuple[str | None, ...], _OpenFile] = {}
        self.done: list[FileAdd] = []
        self.created: list[str] = []
        self.buffered_bytes = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        batch = self._conform(batch)
        parts = self.plan.partition_by
        if not parts:
            self._append((), batch)
            return
        for key, piece in _split(batch, parts):
            self._append(key, piece.select(self.file_schema.names))

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        target = self.plan.schema
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
                f"Delta table {self.plan.path}: a batch of type {batch.schema.to_string()!r} "
                f"cannot be cast to the table's types ({first_line(exc)}); cast the "
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
            entry.buffered_rows >= self.sizing.row_group_rows
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
            room = self.sizing.max_file_rows - entry.rows
            piece = table.slice(start, room)
            if entry.writer is None:
                self._open_file(entry, piece)
            assert entry.writer is not None and entry.stats is not None
            entry.writer.write_table(piece, row_group_size=max(piece.num_rows, 1))
            entry.stats.observe(piece)
            entry.rows += piece.num_rows
            start += piece.num_rows
            if entry.rows >= self.sizing.max_file_rows or (
                entry.stream.tell() >= self.sizing.max_file_bytes
            ):
                self._close_file(entry)

    def _open_file(self, entry: _OpenFile, first: pa.Table) -> None:
        folder = "/".join(
            partition_dir(name, value)
            for name, value in zip(self.plan.partition_by, entry.key, strict=True)
        )
        name = f"part-{self.plan.write_id}-{uuid.uuid4().hex}.snappy.parquet"
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
                partition_values=dict(zip(self.plan.partition_by, entry.key, strict=True)),
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
            delete_files(self.plan.path, self.created)
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
