"""The data source's writer: plan a write on the driver, write files in tasks, commit once.

Spark calls `DeltaDataSource.writer` on the driver (sinks/source.py), which parses the options
back into the WriteRequest that `write_delta` sent and resolves it into a WritePlan
(`plan_write`); the DeltaArrowWriter holding the plan is pickled to every task. Each task
(`write`) hands its batches, or what a fused write's transform makes of them, to a TaskWriter
(sinks/files.py) and returns the files in a DeltaCommitMessage. On the driver, `commit` makes ONE
Delta commit of all of them (sinks/commit.py) and `abort` deletes them; either way files of
failed or duplicate task attempts are swept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import pyarrow as pa
from pyspark.sql.datasource import DataSourceArrowWriter, WriterCommitMessage
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from batchscore.errors import BatchScoreError, SinkError, StepError, first_line
from batchscore.sinks.commit import FileAdd, commit_files
from batchscore.sinks.files import TaskWriter
from batchscore.sinks.log import find_commit, transaction_version
from batchscore.sinks.ownership import delete_files
from batchscore.sinks.request import WritePlan, WriteRequest, new_write_id
from batchscore.sinks.schema import (
    check_schema_compatible,
    delta_arrow_schema,
    table_partition_columns,
)
from batchscore.sinks.spark_errors import marked
from batchscore.sinks.storage import is_delta_table, open_table, written_files
from batchscore.sinks.storage_config import storage_scope
from batchscore.sinks.transform import BatchTransform, FusedTransform, load_transform


def plan_write(options: Mapping[str, str], schema: StructType, overwrite: bool) -> WritePlan:
    """The WritePlan for the data source's write options and the DataFrame's `schema`;
    `overwrite`: Spark's save mode (the write mode when the options name none)."""
    request = WriteRequest.from_options(
        options, default_mode="overwrite" if overwrite else "append"
    )
    path = request.path
    # A fused write's table gets the transform's output schema; the DataFrame is its input.
    arrow = (
        request.transform.schema
        if request.transform is not None
        else to_arrow_schema(schema, timezone="UTC")
    )
    check_schema_compatible(
        path, arrow, partition_by=request.partition_by, policy=request.schema_policy
    )
    existing = open_table(path) if is_delta_table(path) else None
    partition_by = request.partition_by
    if partition_by is None:
        partition_by = table_partition_columns(existing) if existing is not None else []
    skip = False
    if request.app is not None:
        done = transaction_version(path, request.app.app_id)
        skip = done is not None and done >= request.app.version
    resolved = replace(
        request, partition_by=partition_by, write_id=request.write_id or new_write_id()
    )
    return WritePlan(
        resolved,
        delta_arrow_schema(arrow, path=path),
        skip=skip,
        table_configuration=dict(existing.metadata().configuration) if existing else {},
    )


@dataclass
class DeltaCommitMessage(WriterCommitMessage):
    """What one write task produced: its files (add actions) and row count."""

    files: list[FileAdd]
    rows: int


class DeltaArrowWriter(DataSourceArrowWriter):
    """Writes Parquet files per task; the driver makes one Delta commit of all of them.

    `storage`: the driver's object-store options (storage_config), active around each step."""

    def __init__(self, plan: WritePlan, *, storage: Mapping[str, str] | None = None) -> None:
        self.plan = plan
        self.storage = dict(storage or {})

    def write(self, iterator: Iterator[pa.RecordBatch]) -> DeltaCommitMessage:
        with storage_scope(self.storage):
            return self._write(iterator)

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        with storage_scope(self.storage):
            self._commit(messages)

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        with storage_scope(self.storage):
            self._abort(messages)

    def _write(self, iterator: Iterator[pa.RecordBatch]) -> DeltaCommitMessage:
        if self.plan.skip:
            for _ in iterator:
                pass
            return DeltaCommitMessage(files=[], rows=0)
        task = TaskWriter(self.plan)
        try:
            with marked():
                batches = _transformed(self.plan, iterator)
                try:
                    for batch in batches:
                        task.add(batch)
                    files = task.finish()
                except OSError as exc:
                    raise SinkError(
                        f"Delta table {self.plan.path}: writing a data file failed "
                        f"({first_line(exc)}); check that the path is writable and "
                        "has free space."
                    ) from None
        except BaseException:
            task.discard()
            raise
        return DeltaCommitMessage(files=files, rows=sum(f.rows for f in files))

    def _commit(self, messages: list[WriterCommitMessage | None]) -> None:
        files = [f for m in messages if isinstance(m, DeltaCommitMessage) for f in m.files]
        with marked():
            try:
                commit_files(self.plan, files)
            finally:
                _remove_strays(self.plan, keep={f.path for f in files}, files=files)

    def _abort(self, messages: list[WriterCommitMessage | None]) -> None:
        plan = self.plan
        # Spark also aborts after a failed commit(): never delete files a commit references.
        try:
            if find_commit(plan.path, plan.write_id) is not None:
                return
        except Exception:
            return  # cannot tell: leaving orphans is harmless, deleting committed files is not
        files = [f for m in messages if isinstance(m, DeltaCommitMessage) for f in m.files]
        delete_files(plan.path, [f.path for f in files])
        # Tasks that failed or were killed never sent a message; their files carry the write id.
        # Tasks being cancelled can still be finishing a file: sweep again after a moment.
        for delay in (0.0, 0.5, 1.0):
            time.sleep(delay)
            try:
                delete_files(plan.path, written_files(plan.path, plan.write_id))
            except OSError:
                pass


def _transformed(plan: WritePlan, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The task's own batches, or (fused write) what the transform makes of them."""
    transform = plan.request.transform
    if transform is None:
        return batches
    if isinstance(transform, FusedTransform):  # a plan made without Spark, e.g. in a test
        return _scored(transform.function, batches)
    return _scored(load_transform(plan.path, transform), batches)


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
            f"Step 'score' failed in a write task: {type(exc).__name__}: {first_line(str(exc))}"
        ) from exc


def _remove_strays(plan: WritePlan, *, keep: set[str], files: Sequence[FileAdd]) -> None:
    """Delete files of this write that are not part of the commit (failed or duplicate task
    attempts; all of them when the commit was skipped or failed), in the folders it touched."""
    try:
        committed = is_delta_table(plan.path) and find_commit(plan.path, plan.write_id) is not None
        folders = {f.path.rsplit("/", 1)[0] if "/" in f.path else "" for f in files}
        found = written_files(plan.path, plan.write_id, folders=folders or [""])
        strays = [p for p in found if not committed or p not in keep]
        if strays:
            delete_files(plan.path, strays)
    except Exception:
        pass
