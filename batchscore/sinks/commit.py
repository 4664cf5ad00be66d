"""The one Delta commit of a write: add actions, app transaction, conflict checks and retries.

Tasks write Parquet files and report them as `FileAdd`s; `commit_files` makes ONE commit of all
of them on the driver, against the latest table version, retrying when another writer committed
first. An overwrite (of partitions, or of the whole table) is refused with CommitConflictError
when a commit after the version the write read changed data in the partitions it replaces: a
later writer must not silently replace rows it never saw. On any failure that provably left
nothing committed, the write's files are deleted; when the outcome cannot be read back, they are
left in place (deleting committed files would lose data, an orphan costs only disk).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    RemoveAction,
    Transaction,
    create_table_with_add_actions,
)

from batchscore.errors import BatchScoreError, CommitConflictError, SinkError, first_line
from batchscore.sinks.checkpoints import checkpoint_if_due
from batchscore.sinks.log import (
    METADATA_KEY,
    check_no_conflict,
    current_version,
    lookup_commit,
    table_version,
)
from batchscore.sinks.ownership import delete_files
from batchscore.sinks.request import WritePlan
from batchscore.sinks.schema import (
    SchemaPolicy,
    check_against_table,
    check_partition_columns,
    check_table_features,
    table_partition_columns,
)
from batchscore.sinks.storage import delta_table, is_delta_table, storage_options


@dataclass(frozen=True)
class FileAdd:
    """One Parquet file a write task produced: what its Delta add action needs."""

    path: str
    """Relative to the table root, raw (not URL-encoded: delta-rs encodes it)."""
    size: int
    partition_values: dict[str, str | None]
    modification_time: int
    stats: str
    rows: int

    def to_action(self) -> AddAction:
        return AddAction(
            path=self.path,
            size=self.size,
            partition_values=dict(self.partition_values),
            modification_time=self.modification_time,
            data_change=True,
            stats=self.stats,
        )


def commit_files(
    plan: WritePlan, files: Sequence[FileAdd], *, max_retries: int = 8, writer: str = "python"
) -> int | None:
    """Make ONE Delta commit adding `files` (already on disk under the plan's table) as `plan`
    says; returns its version.

    Returns None without committing when there are no files, or when the plan's app id already
    committed its version or a later one (then the files are deleted). On failure the files are
    deleted and a SinkError (CommitConflictError for a lost race) is raised. The write's read
    version is the request's, else the version when the commit starts. `writer` goes into the
    commit info (`batchscore.writer`): "python" for the data source's tasks, "spark-parquet"
    for Spark's own writer (sinks/spark_writer.py).
    """
    if not files:
        return None
    request = plan.request
    read_version = request.read_version
    if read_version is None:
        read_version = current_version(plan.path)
    custom: dict[str, Any] = dict(request.metadata or {})
    custom[METADATA_KEY] = {
        "write_id": plan.write_id,
        "mode": request.mode,
        "files": len(files),
        "rows": sum(f.rows for f in files),
        "read_version": read_version,
        "writer": writer,
    }
    version = _commit_with_retries(_Commit(plan, list(files), custom, read_version), max_retries)
    checkpoint_if_due(plan.path, version)
    return version


@dataclass(frozen=True)
class _Commit:
    """One write's commit: the plan, its files, the commit info and the version it read."""

    plan: WritePlan
    files: list[FileAdd]
    custom: dict[str, Any]
    read_version: int

    def properties(self) -> CommitProperties:
        request = self.plan.request
        app = request.app
        txns = (
            None
            if app is None
            else [Transaction(app.app_id, int(app.version), int(time.time() * 1000))]
        )
        # An overwrite, or an idempotent append, commits exactly on the snapshot it checked
        # (conflicts, app transaction): delta-rs must not rebase it over a concurrent commit
        # it never checked; commit_files re-reads and re-checks instead. Plain appends
        # conflict with nothing, so delta-rs may rebase them.
        retries = None if request.mode == "append" and txns is None else 0
        return CommitProperties(
            custom_metadata=self.custom, app_transactions=txns, max_commit_retries=retries
        )


def _commit_with_retries(commit: _Commit, max_retries: int) -> int | None:
    path, files, mode = commit.plan.path, commit.files, commit.plan.request.mode
    write_id = commit.plan.write_id
    attempt = 0
    committed = False
    keep_files = False
    try:
        while True:
            attempt += 1
            creating = not is_delta_table(path)
            try:
                if creating:
                    _create(commit)
                elif not _commit_once(commit):
                    delete_files(path, [f.path for f in files])
                    return None
            except BatchScoreError:
                raise
            except Exception as exc:
                landed, known = lookup_commit(path, write_id)
                if landed is not None:
                    committed = True
                    return landed
                if not known:
                    keep_files = True
                    raise SinkError(
                        f"Delta table {path}: the commit failed ({first_line(str(exc))}) and its "
                        "outcome cannot be read back; the new files were left in place, check "
                        "`batchscore history` and rerun the job if the write is missing."
                    ) from None
                if attempt <= max_retries and (
                    isinstance(exc, CommitFailedError) or (creating and is_delta_table(path))
                ):
                    # Another commit landed first (or created the table): the next attempt
                    # re-reads the table and re-checks for conflicts before committing again.
                    time.sleep(min(0.1 * 2**attempt, 2.0))
                    continue
                if isinstance(exc, CommitFailedError):
                    raise CommitConflictError(
                        f"Delta table {path}: another writer committed first {attempt} times in "
                        f"a row and this {mode} write gave up ({first_line(str(exc))}); "
                        "nothing was committed and the new files were deleted, rerun the job."
                    ) from None
                raise SinkError(
                    f"Delta table {path}: the commit failed ({first_line(str(exc))}); nothing was "
                    "committed and the new files were deleted, fix the cause and rerun."
                ) from None
            committed = True
            break
    except BaseException:
        if not committed and not keep_files:
            delete_files(path, [f.path for f in files])
        raise
    landed, _ = lookup_commit(path, write_id)
    return landed if landed is not None else table_version(path)


def _create(commit: _Commit) -> None:
    plan = commit.plan
    check_partition_columns(plan.path, plan.schema, plan.partition_by)
    create_table_with_add_actions(
        plan.path,
        DeltaSchema.from_arrow(plan.schema),
        [f.to_action() for f in commit.files],
        mode="error",
        partition_by=list(plan.partition_by) or None,
        storage_options=storage_options(plan.path),
        commit_properties=commit.properties(),
    )


def _commit_once(commit: _Commit) -> bool:
    """One attempt on the latest snapshot; False when the app transaction is already done."""
    plan, request = commit.plan, commit.plan.request
    path = plan.path
    table = delta_table(path, fresh=True)  # it commits through this handle
    check_table_features(table, path=path, for_write=True)
    if request.mode != "append":
        check_no_conflict(
            path,
            table_partition_columns(table),
            [f.partition_values for f in commit.files],
            mode=request.mode,
            read_version=commit.read_version,
            latest=int(table.version()),
        )
    if request.app is not None:
        done = table.transaction_version(request.app.app_id)
        if done is not None and int(done) >= request.app.version:
            return False
    overwrite_schema = request.schema_policy.overwrite_schema  # only ever with mode overwrite
    check_against_table(
        table,
        plan.schema,
        path=path,
        partition_by=plan.partition_by,
        policy=SchemaPolicy(overwrite_schema=overwrite_schema),
    )
    adds = [f.to_action() for f in commit.files]
    if request.mode == "overwrite":
        table.create_write_transaction(
            [*adds],
            mode="overwrite",
            schema=DeltaSchema.from_arrow(plan.schema) if overwrite_schema else table.schema(),
            partition_by=list(plan.partition_by),
            commit_properties=commit.properties(),
        )
        return True
    actions: list[AddAction | RemoveAction] = list(adds)
    if request.mode == "overwrite_partitions":
        actions = [*_remove_actions(table, commit.files), *adds]
    table.create_write_transaction(
        actions,
        mode="append",
        schema=table.schema(),
        partition_by=list(plan.partition_by),
        commit_properties=commit.properties(),
    )
    return True


def _remove_actions(table: DeltaTable, files: Sequence[FileAdd]) -> list[RemoveAction]:
    """Remove actions for every live file in a partition that `files` write to."""
    parts = table_partition_columns(table)
    written = {tuple(f.partition_values.get(name) for name in parts) for f in files}
    now = int(time.time() * 1000)
    removes: list[RemoveAction] = []
    for action in pa.table(table.get_add_actions(flatten=True)).to_pylist():
        key = tuple(
            None if action.get(f"partition.{n}") is None else str(action[f"partition.{n}"])
            for n in parts
        )
        if key in written:
            removes.append(
                RemoveAction(
                    path=urllib.parse.unquote(str(action["path"])),
                    data_change=True,
                    deletion_timestamp=now,
                    size=int(action["size_bytes"]),
                    partition_values=dict(zip(parts, key, strict=True)),
                )
            )
    return removes
