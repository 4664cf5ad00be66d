"""What one write asks for (`WriteRequest`) and what it resolves to at planning (`WritePlan`).

A write's settings are stated once, in a frozen `WriteRequest` validated when it is made, and
that object travels: `write_delta` takes it, turns it into the data source's string options
(`to_options`), the data source turns the options back into the same request (`from_options`),
resolves it against the table into a `WritePlan` that is pickled to the tasks, and the commit
reads the plan. The grouping follows delta-rs: the app transaction is its `Transaction`, the
custom metadata goes to `CommitProperties`, the file sizing plays `WriterProperties`' part.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import pyarrow as pa

from batchscore.errors import SinkError, did_you_mean
from batchscore.sinks.log import METADATA_KEY
from batchscore.sinks.options import int_option, name_list, required_path
from batchscore.sinks.ownership import WRITE_ID
from batchscore.sinks.schema import STRICT, SchemaPolicy
from batchscore.sinks.storage import normalize_path
from batchscore.sinks.transform import (
    TASKS_DIR,
    FusedTransform,
    TransformRef,
    decode_schema,
    transform_options,
)

WriteMode = Literal["append", "overwrite_partitions", "overwrite"]
WRITE_MODES: tuple[WriteMode, ...] = ("append", "overwrite_partitions", "overwrite")

MAX_FILE_ROWS = 1_000_000
MAX_FILE_BYTES = 128 * 1024 * 1024
ROW_GROUP_ROWS = 256 * 1024


def new_write_id() -> str:
    """A fresh write id: it goes into the write's file names and its commit info."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class AppTransaction:
    """An idempotent writer and the version of its run (a Delta `txn` action). A write whose
    `app_id` already committed `version` or a later one commits nothing."""

    app_id: str
    version: int


@dataclass(frozen=True)
class FileSizing:
    """How big the data files and their row groups get (the writer's properties)."""

    max_file_rows: int = MAX_FILE_ROWS
    max_file_bytes: int = MAX_FILE_BYTES
    row_group_rows: int = ROW_GROUP_ROWS


DEFAULT_SIZING = FileSizing()


@dataclass(frozen=True)
class WriteRequest:
    """One write to the Delta table at `path`, validated when made (SinkError naming the table).

    mode: "append"; "overwrite_partitions" (replace exactly the partitions the data holds);
    "overwrite" (the whole table). partition_by: partition columns (None: the table's own, or
    none for a new table). app: idempotency; a rerun with a version already committed for its
    app id commits nothing. metadata: JSON-able dict stored in the commit info (the key
    "batchscore" is the sink's own). schema_policy: which schema differences the write may make
    (see SchemaPolicy). read_version: the table version the job's decisions were based on (None:
    the version when the write starts); an overwrite that a later commit to the same partitions
    would silently undo fails with CommitConflictError instead. transform: a fused write (each
    task writes what the transform makes of its batches): a FusedTransform as the caller passes
    it, or the TransformRef where write_delta stored it, as the data source gets it. sizing: data
    file and row group sizes. write_id: goes into file names and the commit info (None: a fresh
    one for each write).
    """

    path: str
    mode: WriteMode
    partition_by: Sequence[str] | None = None
    app: AppTransaction | None = None
    metadata: Mapping[str, Any] | None = None
    schema_policy: SchemaPolicy = STRICT
    read_version: int | None = None
    transform: FusedTransform | TransformRef | None = None
    sizing: FileSizing = DEFAULT_SIZING
    write_id: str | None = None

    def __post_init__(self) -> None:
        path = normalize_path(self.path)
        object.__setattr__(self, "path", path)
        check_write_mode(path, self.mode)
        if self.partition_by is not None:
            object.__setattr__(self, "partition_by", tuple(self.partition_by))
        if self.app is not None and int(self.app.version) < 0:
            raise SinkError(
                f"Delta table {path}: app_version must be >= 0, got {self.app.version}; pass "
                "the run's sequence number."
            )
        if self.schema_policy.overwrite_schema and self.mode != "overwrite":
            raise SinkError(
                f"Delta table {path}: overwrite_schema=True needs mode='overwrite' (a partial "
                "write cannot change the table's schema); change the mode or drop "
                "overwrite_schema."
            )
        if self.metadata is not None:
            object.__setattr__(self, "metadata", dict(self.metadata))
            self.metadata_json()  # refuse bad metadata before any work
        if self.write_id is not None and not WRITE_ID.match(self.write_id):
            raise SinkError(
                f"Delta table {path}: option write_id={self.write_id[:80]!r} is not 1 to 64 "
                "letters, digits, '_' or '-'; it goes into file names, pass such an id or none."
            )
        for name in ("max_file_rows", "max_file_bytes", "row_group_rows"):
            value = getattr(self.sizing, name)
            if not isinstance(value, int) or value < 1:
                raise SinkError(
                    f"Delta table {path}: {name}={value!r} is not a positive whole number; "
                    "pass one, or leave it out for the default."
                )

    def metadata_json(self) -> str | None:
        """The user's commit metadata as JSON (None when there is none)."""
        if self.metadata is None:
            return None
        if METADATA_KEY in self.metadata:
            raise SinkError(
                f"Delta table {self.path}: commit metadata key '{METADATA_KEY}' is reserved for "
                "the sink; rename that key."
            )
        try:
            return json.dumps(self.metadata, allow_nan=False, default=str)
        except (TypeError, ValueError) as exc:
            raise SinkError(
                f"Delta table {self.path}: commit metadata is not JSON-serializable ({exc}); "
                "pass strings, numbers, lists and dicts only."
            ) from None

    def to_options(self) -> dict[str, str]:
        """The data source options that carry this request (see from_options). The schema
        policy's evolve_schema and fill_missing are not among them: write_delta applies them
        before the data source sees the data. A FusedTransform must be stored first."""
        if isinstance(self.transform, FusedTransform):
            raise ValueError("store the fused transform first (transform.store_transform)")
        app = self.app
        values: dict[str, str | None] = {
            "path": self.path,
            "mode": self.mode,
            "partition_by": None
            if self.partition_by is None
            else json.dumps(list(self.partition_by)),
            "app_id": None if app is None else app.app_id,
            "app_version": None if app is None else str(int(app.version)),
            "metadata": self.metadata_json(),
            "read_version": None if self.read_version is None else str(int(self.read_version)),
            "write_id": self.write_id,
            "overwrite_schema": "true" if self.schema_policy.overwrite_schema else None,
            "max_file_rows": str(self.sizing.max_file_rows),
            "max_file_bytes": str(self.sizing.max_file_bytes),
            "row_group_rows": str(self.sizing.row_group_rows),
            **transform_options(self.transform),
        }
        return {key: value for key, value in values.items() if value is not None}

    @classmethod
    def from_options(cls, options: Mapping[str, str], *, default_mode: WriteMode) -> WriteRequest:
        """The request the data source's string options state (see the option list in
        sinks/source.py); `default_mode`: the mode when the options name none (Spark's save
        mode)."""
        path = required_path(options)
        mode = (options.get("mode") or default_mode).strip().lower()
        app_id = options.get("app_id") or None
        app_version = int_option(options, "app_version", path)
        if (app_id is None) != (app_version is None):
            raise SinkError(
                f"Delta table {path}: options app_id and app_version go together; pass both "
                "or neither."
            )
        overwrite_schema = (options.get("overwrite_schema") or "").strip().lower() == "true"
        sizing = FileSizing(
            int_option(options, "max_file_rows", path) or MAX_FILE_ROWS,
            int_option(options, "max_file_bytes", path) or MAX_FILE_BYTES,
            int_option(options, "row_group_rows", path) or ROW_GROUP_ROWS,
        )
        return cls(
            path,
            cast(WriteMode, mode),
            partition_by=name_list(options.get("partition_by")),
            app=None
            if app_id is None or app_version is None
            else AppTransaction(app_id, app_version),
            metadata=_metadata_option(options, path),
            schema_policy=SchemaPolicy(overwrite_schema=overwrite_schema),
            read_version=int_option(options, "read_version", path),
            transform=_transform_option(options, path),
            sizing=sizing,
            write_id=options.get("write_id") or None,
        )


def check_write_mode(path: str, mode: object) -> None:
    """SinkError unless `mode` is one of WRITE_MODES: the one place a write mode is checked."""
    if mode not in WRITE_MODES:
        raise SinkError(
            f"Delta table {path}: unknown write mode '{mode}'; use one of "
            f"{', '.join(WRITE_MODES)}.{did_you_mean(str(mode), WRITE_MODES)}"
        )


def _metadata_option(options: Mapping[str, str], path: str) -> dict[str, Any] | None:
    text = options.get("metadata")
    if not text:
        return None
    try:
        loaded = json.loads(text)
    except ValueError:
        loaded = None
    if not isinstance(loaded, dict):
        raise SinkError(
            f"Delta table {path}: option metadata must be a JSON object, got "
            f"{text[:80]!r}; pass json.dumps({{...}})."
        )
    return loaded


def _transform_option(options: Mapping[str, str], path: str) -> TransformRef | None:
    names = ("transform", "transform_sha256", "transform_schema")
    values = [options.get(name) or None for name in names]
    if all(v is None for v in values):
        return None
    rel, digest, schema = values
    if rel is None or digest is None or schema is None:
        raise SinkError(
            f"Delta table {path}: options {', '.join(names)} go together; pass all three "
            "(write_delta(transform=FusedTransform(...)) does) or none."
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


@dataclass(frozen=True)
class WritePlan:
    """A request resolved against the table when Spark plans the write: its partition columns
    and write id settled, the full Arrow schema the table gets, whether the app transaction was
    already committed, and the table configuration the file statistics follow. Pickled with the
    data source's writer to every task; the commit reads it too."""

    request: WriteRequest
    schema: pa.Schema
    """The full normalized Arrow schema the table gets (partition columns included)."""
    skip: bool = False
    """The app transaction was already committed when planning: write nothing."""
    table_configuration: Mapping[str, str | None] = field(default_factory=dict)
    """The existing table's configuration: which columns get file statistics follows it."""

    def __post_init__(self) -> None:
        if self.request.partition_by is None or self.request.write_id is None:
            raise ValueError("a WritePlan needs a request with partition_by and write_id set")

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def partition_by(self) -> tuple[str, ...]:
        return tuple(self.request.partition_by or ())

    @property
    def write_id(self) -> str:
        return self.request.write_id or ""

    @property
    def file_schema(self) -> pa.Schema:
        """The data files' schema: partition columns are in the folder names, not the files."""
        return pa.schema([f for f in self.schema if f.name not in self.partition_by])
