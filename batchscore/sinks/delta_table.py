"""Driver-side Delta Lake helpers, written on delta-rs (`deltalake`) and pyarrow, no Delta JAR.

The functions here read table state (version, app transactions, history), check that a write's
schema fits the table, make the single Delta commit of a Spark write (called by the data source's
`commit()`), and wrap the Spark data source "batchscore_delta" (`read_delta`, `write_delta`,
`register_view`). Only `read_delta`, `write_delta` and `register_view` need Spark, and they import
it lazily, so the rest works in a plain Python process.

No DeltaTable handle outlives a call: processes that keep deltalake scans around can abort at
interpreter exit (delta-rs #2184), so every function opens the table, reads and lets it go.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
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

from batchscore import errors as _errors
from batchscore.errors import BatchScoreError, CommitConflictError, SinkError, did_you_mean

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from batchscore.sinks.transform import BatchTransform

WriteMode = Literal["append", "overwrite_partitions", "overwrite"]
CommitReason = Literal["committed", "empty", "already_committed"]
WRITE_MODES: tuple[str, ...] = ("append", "overwrite_partitions", "overwrite")
SOURCE_NAME = "batchscore_delta"
ERROR_MARKER = "BATCHSCORE_ERROR"
METADATA_KEY = "batchscore"
"""Key of the commit-info entry where the sink records its own facts (write id, mode, counts)."""

PartitionFilter = tuple[str, str, Any]

_MARKED = re.compile(ERROR_MARKER + r"\[(\w+)\]: (.*)")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# Characters Spark/Hive escape in partition folder names (ExternalCatalogUtils.escapePathName).
_ESCAPED = frozenset("\"#%'*/:=?\\\x7f{[]^") | frozenset(chr(c) for c in range(0x20))
_STANDARD_COMMIT_KEYS = frozenset(
    {
        "timestamp",
        "operation",
        "operationParameters",
        "operationMetrics",
        "readVersion",
        "isolationLevel",
        "isBlindAppend",
        "engineInfo",
        "clientVersion",
        "userMetadata",
        "userId",
        "userName",
        "txnId",
        "inCommitTimestamp",
        "job",
        "notebook",
        "clusterId",
        "tags",
        "version",
    }
)


# --------------------------------------------------------------------------------------------
# errors that cross the Spark boundary


def one_line(text: str) -> str:
    """The first non-empty line of `text`, without delta-rs' appended backtraces."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip()


def mark_error(err: BatchScoreError) -> BatchScoreError:
    """The same error class with `BATCHSCORE_ERROR[Class]: ` before its one-line message.

    Errors raised inside the data source reach the driver wrapped in Spark exceptions; the marker
    lets `unwrap_spark_error` find and rebuild them.
    """
    message = one_line(str(err))
    if message.startswith(ERROR_MARKER + "["):
        return err
    return type(err)(f"{ERROR_MARKER}[{type(err).__name__}]: {message}")


def unwrap_spark_error(exc: BaseException) -> BatchScoreError | None:
    """Rebuild the batchscore error carried, marked, inside a Spark or Py4J exception.

    Returns None when the exception text carries no `BATCHSCORE_ERROR[...]` marker.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in _exception_texts(current):
            match = _MARKED.search(text)
            if match is not None:
                return _rebuild(match.group(1), match.group(2))
        current = current.__cause__ or current.__context__
    return None


def _exception_texts(exc: BaseException) -> list[str]:
    texts = [str(exc)]
    for attr in ("desc", "message", "_message"):
        value = getattr(exc, attr, None)
        if isinstance(value, str):
            texts.append(value)
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            texts.append(str(java.toString()))
        except Exception:
            pass
    return texts


def _rebuild(class_name: str, message: str) -> BatchScoreError:
    message = re.sub(r"\s+SQLSTATE: \w+\.?\s*$", "", message).strip()
    cls = getattr(_errors, class_name, None)
    if isinstance(cls, type) and issubclass(cls, BatchScoreError):
        return cls(message)
    return SinkError(message)


# --------------------------------------------------------------------------------------------
# paths and storage


def normalize_path(path: str | os.PathLike[str]) -> str:
    """Absolute local path for local tables (also for `file:` URIs); other URIs unchanged."""
    text = os.fspath(path)
    if text.startswith("file:"):
        text = urllib.parse.unquote(urllib.parse.urlparse(text).path)
    elif "://" in text:
        return text.rstrip("/")
    return os.path.abspath(os.path.expanduser(text))


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem base path for a table path from normalize_path."""
    if "://" in path:
        fs, base = pafs.FileSystem.from_uri(path)
        return fs, base.rstrip("/")
    return pafs.LocalFileSystem(), path


def _not_a_table(path: str) -> SinkError:
    return SinkError(
        f"{path} is not a Delta table (no _delta_log). Check the path, or create the table by "
        "writing to it with write_delta(...)."
    )


def is_delta_table(path: str | os.PathLike[str]) -> bool:
    """True when `path` holds a Delta table (a readable `_delta_log`)."""
    try:
        return bool(DeltaTable.is_deltatable(normalize_path(path)))
    except Exception:
        return False


def open_table(path: str, *, version: int | None = None) -> DeltaTable:
    """DeltaTable at `path` (normalized), with SinkErrors that name the table and the fix."""
    if not is_delta_table(path):
        raise _not_a_table(path)
    try:
        return DeltaTable(path, version=version)
    except Exception as exc:
        if version is not None:
            latest = table_version(path)
            raise SinkError(
                f"Delta table {path} has no version {version} (latest is {latest}); "
                f"pass a version between 0 and {latest}, or None for the latest."
            ) from None
        raise SinkError(
            f"Delta table {path} cannot be opened: {one_line(str(exc))}; check the path and "
            "the _delta_log files."
        ) from None


def table_version(path: str | os.PathLike[str]) -> int | None:
    """Latest committed version of the table, or None when `path` holds no Delta table."""
    table_path = normalize_path(path)
    if not is_delta_table(table_path):
        return None
    return int(DeltaTable(table_path).version())


def transaction_version(path: str | os.PathLike[str], app_id: str) -> int | None:
    """The last version committed for idempotent writer `app_id`, or None (no table / no txn)."""
    table_path = normalize_path(path)
    if not is_delta_table(table_path):
        return None
    value = DeltaTable(table_path).transaction_version(app_id)
    return None if value is None else int(value)


# --------------------------------------------------------------------------------------------
# schema


def _unsupported(path: str, column: str, dtype: pa.DataType, hint: str = "") -> SinkError:
    return SinkError(
        f"Delta table {path}: column '{column}' has Arrow type {dtype}, which the sink cannot "
        f"store{hint}; cast it to string, long, int, double, float, boolean, date, timestamp, "
        "decimal, array or struct before writing."
    )


def normalize_arrow_type(dtype: pa.DataType, *, path: str, column: str) -> pa.DataType:
    """The Arrow type the sink writes for `dtype`: Delta-valid, microsecond UTC timestamps,
    small (not large) strings and lists named "element", all nested fields nullable."""
    t = pa.types
    if t.is_timestamp(dtype):
        return pa.timestamp("us", "UTC" if dtype.tz is not None else None)
    if t.is_dictionary(dtype):
        return normalize_arrow_type(dtype.value_type, path=path, column=column)
    if t.is_large_string(dtype) or t.is_string_view(dtype):
        return pa.string()
    if t.is_large_binary(dtype) or t.is_binary_view(dtype) or t.is_fixed_size_binary(dtype):
        return pa.binary()
    if t.is_date64(dtype):
        return pa.date32()
    if t.is_list(dtype) or t.is_large_list(dtype) or t.is_fixed_size_list(dtype):
        item = normalize_arrow_type(dtype.value_type, path=path, column=column)
        return pa.list_(pa.field("element", item, nullable=True))
    if t.is_list_view(dtype) or t.is_large_list_view(dtype):
        item = normalize_arrow_type(dtype.value_type, path=path, column=column)
        return pa.list_(pa.field("element", item, nullable=True))
    if t.is_map(dtype):
        key = normalize_arrow_type(dtype.key_type, path=path, column=column)
        item = normalize_arrow_type(dtype.item_type, path=path, column=column)
        return pa.map_(pa.field("key", key, nullable=False), pa.field("value", item))
    if t.is_struct(dtype):
        children = [
            pa.field(
                child.name,
                normalize_arrow_type(child.type, path=path, column=f"{column}.{child.name}"),
                nullable=True,
            )
            for child in dtype
        ]
        if not children:
            raise _unsupported(path, column, dtype, " (a struct without fields)")
        return pa.struct(children)
    if t.is_decimal(dtype):
        if dtype.precision > 38:
            raise _unsupported(path, column, dtype, " (Delta decimals hold at most 38 digits)")
        return pa.decimal128(dtype.precision, dtype.scale)
    if t.is_null(dtype):
        raise _unsupported(
            path, column, dtype, " (a column of untyped None values, e.g. F.lit(None))"
        )
    if t.is_unsigned_integer(dtype):
        raise _unsupported(path, column, dtype, " (Delta has no unsigned integers)")
    if (
        t.is_signed_integer(dtype)
        or t.is_float32(dtype)
        or t.is_float64(dtype)
        or t.is_boolean(dtype)
        or t.is_string(dtype)
        or t.is_binary(dtype)
        or t.is_date32(dtype)
    ):
        return dtype
    raise _unsupported(path, column, dtype)


def delta_arrow_schema(schema: pa.Schema, *, path: str) -> pa.Schema:
    """The exact Arrow schema the sink writes for incoming `schema` (see normalize_arrow_type).

    Top-level fields are nullable too: the sink never declares NOT NULL columns, so writes that
    differ only in nullability stay compatible.
    """
    seen: dict[str, str] = {}
    fields = []
    for item in schema:
        lowered = item.name.lower()
        if lowered in seen:
            raise SinkError(
                f"Delta table {path}: columns '{seen[lowered]}' and '{item.name}' differ only in "
                "case, which Delta treats as one column; rename one of them before writing."
            )
        seen[lowered] = item.name
        dtype = normalize_arrow_type(item.type, path=path, column=item.name)
        fields.append(pa.field(item.name, dtype, nullable=True))
    result = pa.schema(fields)
    try:
        DeltaSchema.from_arrow(result)
    except Exception as exc:
        raise SinkError(
            f"Delta table {path}: the schema cannot be stored in Delta ({one_line(str(exc))}); "
            "cast the offending column to a supported type before writing."
        ) from None
    return result


def _delta_fields(schema_json: str) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = json.loads(schema_json)["fields"]
    return fields


def _strip(dtype: Any) -> Any:
    """A Delta type JSON value without nullability and metadata, for comparisons."""
    if isinstance(dtype, dict):
        return {
            key: _strip(value)
            for key, value in dtype.items()
            if key not in ("nullable", "containsNull", "valueContainsNull", "metadata")
        }
    if isinstance(dtype, list):
        return [_strip(item) for item in dtype]
    return dtype


def render_delta_type(dtype: Any) -> str:
    """A Delta type JSON value in Spark's short form: long, array<double>, struct<a:int>."""
    if isinstance(dtype, str):
        return dtype
    kind = dtype.get("type")
    if kind == "array":
        return f"array<{render_delta_type(dtype['elementType'])}>"
    if kind == "map":
        key = render_delta_type(dtype["keyType"])
        return f"map<{key},{render_delta_type(dtype['valueType'])}>"
    if kind == "struct":
        inner = ",".join(f"{f['name']}:{render_delta_type(f['type'])}" for f in dtype["fields"])
        return f"struct<{inner}>"
    return json.dumps(dtype)


def _check_partition_columns(path: str, schema: pa.Schema, partition_by: Sequence[str]) -> None:
    if len(set(partition_by)) != len(partition_by):
        raise SinkError(
            f"Delta table {path}: partition_by {list(partition_by)} names a column twice; "
            "list each partition column once."
        )
    for name in partition_by:
        if name not in schema.names:
            raise SinkError(
                f"Delta table {path}: partition column '{name}' is not in the data (columns: "
                f"{', '.join(schema.names)});{did_you_mean(name, schema.names)} fix partition_by."
            )
        dtype = schema.field(name).type
        if not is_partition_type(dtype):
            raise SinkError(
                f"Delta table {path}: partition column '{name}' has type {dtype}; partition by "
                "a string, integer, boolean or date column (cast it, e.g. to string)."
            )
    if len(partition_by) >= len(schema.names):
        raise SinkError(
            f"Delta table {path}: every column is a partition column, so the data files would "
            "be empty; keep at least one column out of partition_by."
        )


def is_partition_type(dtype: pa.DataType) -> bool:
    """Whether the sink can partition by a column of (normalized) Arrow type `dtype`."""
    t = pa.types
    return bool(
        t.is_string(dtype)
        or t.is_signed_integer(dtype)
        or t.is_boolean(dtype)
        or t.is_date32(dtype)
    )


ColumnFilter = Callable[[str], bool]
"""Which of the table's columns a write may leave out (they are written as nulls)."""


@dataclass(frozen=True)
class SchemaDiff:
    """How a write's columns differ from the table's (Delta type JSON, nullability stripped)."""

    added: dict[str, Any]
    """Columns of the write that the table lacks."""
    changed: dict[str, tuple[Any, Any]]
    """Columns whose type differs: name -> (table type, write type)."""
    missing: dict[str, Any]
    """Columns of the table that the write lacks."""


def schema_diff(table: DeltaTable, schema: pa.Schema) -> SchemaDiff:
    """Compare a normalized Arrow `schema` with the table's, by column name."""
    old = {f["name"]: _strip(f["type"]) for f in _delta_fields(table.schema().to_json())}
    new = {
        f["name"]: _strip(f["type"])
        for f in _delta_fields(DeltaSchema.from_arrow(schema).to_json())
    }
    return SchemaDiff(
        added={name: dtype for name, dtype in new.items() if name not in old},
        changed={
            name: (old[name], dtype)
            for name, dtype in new.items()
            if name in old and old[name] != dtype
        },
        missing={name: dtype for name, dtype in old.items() if name not in new},
    )


def _schema_problems(
    diff: SchemaDiff, *, evolve_schema: bool, fill_missing: ColumnFilter | None
) -> tuple[list[str], list[str]]:
    """(what is wrong, how to fix it) for the differences this write may not have."""
    problems: list[str] = []
    fixes: list[str] = []
    for name, (old, new) in diff.changed.items():
        problems.append(
            f"column '{name}' changes type from {render_delta_type(old)} to "
            f"{render_delta_type(new)}"
        )
    if diff.changed:
        fixes.append(
            "a column's type never changes in place: cast it back to the table's type, write "
            "to a new path, or use mode='overwrite' with overwrite_schema=True to replace the "
            "whole table"
        )
    added = {} if evolve_schema else diff.added
    for name, dtype in added.items():
        problems.append(
            f"new column '{name}' ({render_delta_type(dtype)}) is not in the table"
            f"{did_you_mean(name, diff.missing)}"
        )
    if added:
        fixes.append(
            "to add the new column(s) (existing rows read them as null) set "
            "`output.evolve_schema: true` in the job spec (write_delta(..., "
            "evolve_schema=True)), or write to a new path"
        )
    absent = {n: t for n, t in diff.missing.items() if fill_missing is None or not fill_missing(n)}
    for name, dtype in absent.items():
        problems.append(f"column '{name}' ({render_delta_type(dtype)}) is missing from the data")
    if absent:
        fixes.append("write every column of the table")
    return problems, fixes


def _check_against_table(
    table: DeltaTable,
    schema: pa.Schema,
    *,
    path: str,
    partition_by: Sequence[str] | None,
    overwrite_schema: bool,
    evolve_schema: bool = False,
    fill_missing: ColumnFilter | None = None,
) -> SchemaDiff:
    """Raise SinkError when `schema` (normalized) or `partition_by` do not fit `table`;
    otherwise return how the write differs from the table (what evolution would add)."""
    table_partitions = list(table.metadata().partition_columns)
    if partition_by is not None and list(partition_by) != table_partitions:
        raise SinkError(
            f"Delta table {path} is partitioned by {table_partitions} but the write asks for "
            f"{list(partition_by)}; pass partition_by={table_partitions} or write to a new path."
        )
    if overwrite_schema:
        missing = [name for name in table_partitions if name not in schema.names]
        if missing:
            raise SinkError(
                f"Delta table {path}: the data lacks partition column(s) {missing}; keep them, "
                "or write to a new path to change the partitioning."
            )
        return SchemaDiff({}, {}, {})
    diff = schema_diff(table, schema)
    # A partition column can never be filled with nulls: the rows would land in another
    # partition (and _check_partition_columns refuses the write anyway).
    keep = None if fill_missing is None else _not_in(table_partitions, fill_missing)
    problems, fixes = _schema_problems(diff, evolve_schema=evolve_schema, fill_missing=keep)
    if problems:
        raise SinkError(
            f"Delta table {path}: the write's schema does not match the table: "
            + "; ".join(problems)
            + ". Fix: "
            + "; ".join(fixes)
            + "."
        )
    return diff


def _not_in(names: Sequence[str], predicate: ColumnFilter) -> ColumnFilter:
    excluded = frozenset(names)
    return lambda name: name not in excluded and predicate(name)


def check_schema_compatible(
    path: str | os.PathLike[str],
    arrow_schema: pa.Schema,
    *,
    partition_by: Sequence[str] | None = None,
    overwrite_schema: bool = False,
    evolve_schema: bool = False,
    fill_missing: ColumnFilter | None = None,
) -> SchemaDiff:
    """Raise SinkError unless data of `arrow_schema` can be written to the table at `path`.

    Checks that every type is storable and that the partition columns exist and are of a
    partitionable type. Against an existing table: same column names and types (nullability may
    differ, order may differ) and the same partition columns. `partition_by=None` means "the
    table's own partitioning" for an existing table and "unpartitioned" for a new one.
    evolve_schema: new columns are allowed (the write adds them, nullable). fill_missing: the
    table's columns this predicate accepts may be absent from the data (written as nulls).
    A type change is refused in every case. Returns the differences (empty for a new table).

    A new table is only created in a folder batchscore owns: a folder that exists, is not a
    Delta table and holds files batchscore did not write is refused (ownership.check_table_folder;
    every write path, the data source's planning included, comes through here first).
    """
    table_path = normalize_path(path)
    schema = delta_arrow_schema(arrow_schema, path=table_path)
    diff = SchemaDiff({}, {}, {})
    if is_delta_table(table_path):
        table = DeltaTable(table_path)
        check_table_features(table, path=table_path, for_write=True)
        diff = _check_against_table(
            table,
            schema,
            path=table_path,
            partition_by=partition_by,
            overwrite_schema=overwrite_schema,
            evolve_schema=evolve_schema,
            fill_missing=fill_missing,
        )
        parts = list(partition_by) if partition_by is not None else table_partition_columns(table)
    else:
        from batchscore.sinks.ownership import check_table_folder

        check_table_folder(table_path)
        parts = list(partition_by or [])
    _check_partition_columns(table_path, schema, parts)
    return diff


def add_columns(
    path: str | os.PathLike[str],
    arrow_schema: pa.Schema,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> list[str]:
    """Add the columns of `arrow_schema` that the table lacks, nullable, in one metadata-only
    commit (old rows read them as null); returns their names (none: no commit).

    Type changes are refused as in check_schema_compatible. A concurrent writer that added the
    same columns with the same types first is fine.
    """
    table_path = normalize_path(path)
    schema = delta_arrow_schema(arrow_schema, path=table_path)
    table = open_table(table_path)
    check_table_features(table, path=table_path, for_write=True)
    diff = _check_against_table(
        table,
        schema,
        path=table_path,
        partition_by=None,
        overwrite_schema=False,
        evolve_schema=True,
        fill_missing=lambda _: True,
    )
    if not diff.added:
        return []
    names = [name for name in schema.names if name in diff.added]
    fields = list(DeltaSchema.from_arrow(pa.schema([schema.field(n) for n in names])).fields)
    custom = dict(metadata or {})
    custom["batchscore.schema_evolution"] = {"added": names}
    try:
        table.alter.add_columns(fields, commit_properties=CommitProperties(custom_metadata=custom))
    except Exception as exc:
        again = schema_diff(DeltaTable(table_path), schema)
        if not set(names) & set(again.added) and not again.changed:
            return []  # another writer added exactly these columns first
        raise SinkError(
            f"Delta table {table_path}: adding column(s) {names} failed ({one_line(str(exc))}); "
            "nothing was written, check the table and rerun."
        ) from None
    return names


def table_partition_columns(table: DeltaTable) -> list[str]:
    """The table's partition columns, in order."""
    return list(table.metadata().partition_columns)


def table_arrow_schema(table: DeltaTable) -> pa.Schema:
    """The table's schema as a pyarrow Schema (partition columns included, in table order)."""
    return pa.schema(table.schema().to_arrow())


_UNSUPPORTED_WRITE_FEATURES = frozenset(
    {
        "columnMapping",
        "deletionVectors",
        "checkConstraints",
        "generatedColumns",
        "identityColumns",
        "invariants",
        "rowTracking",
    }
)


def check_table_features(table: DeltaTable, *, path: str, for_write: bool) -> None:
    """Raise SinkError for table features this sink would get wrong (it reads and writes plain
    Parquet files by column name, without deletion vectors or constraints)."""
    mode = table.metadata().configuration.get("delta.columnMapping.mode") or "none"
    if mode != "none":
        raise SinkError(
            f"Delta table {path} uses column mapping (mode {mode}), which the batchscore sink "
            "does not support; read it with deltalake or Spark's Delta reader, or rewrite it "
            "without column mapping."
        )
    protocol = table.protocol()
    readers = set(protocol.reader_features or [])
    if "deletionVectors" in readers:
        raise SinkError(
            f"Delta table {path} has deletion vectors enabled, which the batchscore sink does "
            "not apply; purge and disable them (REORG TABLE ... APPLY (PURGE), then "
            "delta.enableDeletionVectors=false) or read it with Spark's Delta reader."
        )
    if for_write:
        blocked = sorted(set(protocol.writer_features or []) & _UNSUPPORTED_WRITE_FEATURES)
        if blocked:
            raise SinkError(
                f"Delta table {path} uses writer features {blocked}, which the batchscore sink "
                "does not honour; write to a new path or use Spark's Delta writer."
            )


# --------------------------------------------------------------------------------------------
# partition values


def partition_string(value: Any) -> str | None:
    """Delta's string form of a partition value (None and "" are null, as Spark writes them)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    return text if text != "" else None


def partition_dir(column: str, value: str | None) -> str:
    """Hive-style folder name `column=value`, escaped the way Spark escapes it."""
    text = (
        _HIVE_NULL
        if value is None
        else "".join(f"%{ord(ch):02X}" if ch in _ESCAPED else ch for ch in value)
    )
    return f"{_escape_name(column)}={text}"


def _escape_name(name: str) -> str:
    return "".join(f"%{ord(ch):02X}" if ch in _ESCAPED else ch for ch in name)


def parse_partition_value(value: str | None, delta_type: str) -> Any:
    """Typed Python value of a partition string, per the column's Delta primitive type."""
    if value is None:
        return None
    if delta_type in ("byte", "short", "integer", "long"):
        return int(value)
    if delta_type in ("float", "double"):
        return float(value)
    if delta_type == "boolean":
        return value.lower() == "true"
    if delta_type == "date":
        return date.fromisoformat(value)
    if delta_type in ("timestamp", "timestamp_ntz"):
        return datetime.fromisoformat(value)
    return value


# --------------------------------------------------------------------------------------------
# live files (reader planning)


@dataclass(frozen=True)
class LiveFile:
    """One data file of a table snapshot."""

    path: str
    """Relative to the table root, decoded (as on disk)."""
    size: int
    partition_values: dict[str, str | None]
    num_records: int | None


@dataclass(frozen=True)
class Snapshot:
    """What a reader needs from one table version: schema, partitioning and files."""

    path: str
    version: int
    schema: pa.Schema
    partition_columns: list[str]
    files: list[LiveFile]


def _delta_primitive_types(table: DeltaTable) -> dict[str, str]:
    return {
        f["name"]: f["type"] if isinstance(f["type"], str) else "complex"
        for f in _delta_fields(table.schema().to_json())
    }


def load_snapshot(
    path: str,
    *,
    version: int | None = None,
    partition_filters: Sequence[Any] | None = None,
) -> Snapshot:
    """Open the table at `path` (normalized), list its live files, keep those matching filters.

    `partition_filters`: a list of (column, op, value) triples joined by AND, or a list of such
    lists joined by OR; ops are =, ==, !=, <, <=, >, >=, in, not in; columns must be partition
    columns. Values compare typed per the column (a date column compares dates).
    """
    table = open_table(path, version=version)
    check_table_features(table, path=path, for_write=False)
    parts = table_partition_columns(table)
    types = _delta_primitive_types(table)
    groups = _filter_groups(path, partition_filters, parts, types)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    files: list[LiveFile] = []
    for action in actions:
        values = {name: action.get(f"partition.{name}") for name in parts}
        values = {
            k: (None if v is None else str(v) if not isinstance(v, str) else v)
            for k, v in values.items()
        }
        if groups and not any(
            all(_matches(values[col], op, val, types[col]) for col, op, val in group)
            for group in groups
        ):
            continue
        files.append(
            LiveFile(
                path=urllib.parse.unquote(str(action["path"])),
                size=int(action["size_bytes"]),
                partition_values=values,
                num_records=None
                if action.get("num_records") is None
                else int(action["num_records"]),
            )
        )
    return Snapshot(
        path=path,
        version=int(table.version()),
        schema=table_arrow_schema(table),
        partition_columns=parts,
        files=files,
    )


_OPS = ("=", "==", "!=", "<", "<=", ">", ">=", "in", "not in")


def _filter_groups(
    path: str,
    filters: Sequence[Any] | None,
    parts: Sequence[str],
    types: Mapping[str, str],
) -> list[list[tuple[str, str, Any]]]:
    if not filters:
        return []
    raw_groups = (
        [list(group) for group in filters]
        if all(
            isinstance(f, (list, tuple)) and f and isinstance(f[0], (list, tuple)) for f in filters
        )
        else [list(filters)]
    )
    groups: list[list[tuple[str, str, Any]]] = []
    for raw in raw_groups:
        group = []
        for item in raw:
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise SinkError(
                    f"Delta table {path}: partition filter {item!r} is not a [column, op, value] "
                    'triple; write e.g. [["ds", "=", "2026-11-21"]].'
                )
            column, op, value = str(item[0]), str(item[1]).lower().strip(), item[2]
            if column not in parts:
                raise SinkError(
                    f"Delta table {path}: partition filter on '{column}', which is not a partition "
                    f"column (partition columns: {list(parts)});{did_you_mean(column, parts)} "
                    "filter other columns in Spark after the read."
                )
            if op not in _OPS:
                raise SinkError(
                    f"Delta table {path}: partition filter operator '{op}' is not supported; use "
                    f"one of {', '.join(_OPS)}."
                )
            if op in ("in", "not in"):
                if not isinstance(value, (list, tuple, set, frozenset)):
                    raise SinkError(
                        f"Delta table {path}: partition filter '{column} {op}' needs a list "
                        f'value, got {value!r}; write e.g. ["{column}", "in", ["a", "b"]].'
                    )
                typed: Any = [_coerce(path, column, v, types[column]) for v in value]
            else:
                typed = _coerce(path, column, value, types[column])
            group.append((column, op, typed))
        groups.append(group)
    return groups


def _coerce(path: str, column: str, value: Any, delta_type: str) -> Any:
    if value is None:
        return None
    try:
        return parse_partition_value(partition_string(value), delta_type)
    except (TypeError, ValueError):
        raise SinkError(
            f"Delta table {path}: partition filter value {value!r} does not parse as the type "
            f"{delta_type} of column '{column}'; pass a {delta_type} value."
        ) from None


def _matches(raw: str | None, op: str, value: Any, delta_type: str) -> bool:
    actual = parse_partition_value(raw, delta_type)
    if op in ("in", "not in"):
        inside = actual in value
        return inside if op == "in" else (actual is not None and not inside)
    if value is None or actual is None:
        if op in ("=", "=="):
            return actual is None and value is None
        if op == "!=":
            return (actual is None) != (value is None)
        return False
    result: bool
    if op in ("=", "=="):
        result = actual == value
    elif op == "!=":
        result = actual != value
    elif op == "<":
        result = actual < value
    elif op == "<=":
        result = actual <= value
    elif op == ">":
        result = actual > value
    else:
        result = actual >= value
    return result


# --------------------------------------------------------------------------------------------
# the commit


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


def delete_files(path: str, relative_paths: Iterable[str]) -> None:
    """Delete files of the table at `path` (normalized); missing files are fine. Empty partition
    folders left behind are removed too (local tables), and so are the files' ownership markers
    (after the file: a file that could not be deleted keeps its marker)."""
    from batchscore.sinks.ownership import remove_markers

    fs, base = filesystem(path)
    gone = delete_and_prune(fs, base, relative_paths)
    remove_markers(fs, base, gone)


def delete_and_prune(
    fs: pafs.FileSystem, base: str, relative_paths: Iterable[str], *, stop: str = ""
) -> list[str]:
    """Delete files under `base` (missing ones count as deleted), then the folders they leave
    empty, deepest first, up to (not including) `stop` (local filesystems only). The files
    deleted, in order."""
    folders: set[str] = set()
    gone: list[str] = []
    for rel in relative_paths:
        try:
            fs.delete_file(f"{base}/{rel}")
        except FileNotFoundError:
            pass
        except OSError:
            continue
        gone.append(rel)
        parent = os.path.dirname(rel)
        while parent and parent != stop:
            folders.add(parent)
            parent = os.path.dirname(parent)
    if isinstance(fs, pafs.LocalFileSystem):
        for folder in sorted(folders, key=lambda p: p.count("/"), reverse=True):
            try:
                os.rmdir(os.path.join(base, folder))
            except OSError:
                pass
    return gone


def written_files(path: str, write_id: str, *, folders: Iterable[str] | None = None) -> list[str]:
    """Relative paths of the data files on disk that write `write_id` produced (any attempt).

    `folders` (relative) limits the search; None searches the whole table (not `_delta_log`,
    nor `_batchscore`, where the files' markers lie).
    """
    fs, base = filesystem(path)
    prefix = f"part-{write_id}-"
    found: list[str] = []
    if folders is None:
        selectors = [pafs.FileSelector(base, allow_not_found=True, recursive=True)]
    else:
        selectors = [
            pafs.FileSelector(f"{base}/{f}" if f else base, allow_not_found=True)
            for f in sorted(set(folders))
        ]
    for selector in selectors:
        for info in fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.base_name.startswith(prefix):
                continue
            rel = info.path[len(base) :].lstrip("/")
            if not rel.startswith(("_delta_log/", "_batchscore/")):
                found.append(rel)
    return found


_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")


def log_commits(path: str, *, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(version, commitInfo) for the commit files in `_delta_log`, newest first.

    Read from the log files themselves: delta-rs' `history()` numbers commits from its loaded
    snapshot, which mislabels them when another writer commits in between.
    """
    fs, base = filesystem(path)
    log = f"{base}/_delta_log"
    versions = sorted(
        (
            int(match.group(1))
            for info in fs.get_file_info(pafs.FileSelector(log, allow_not_found=True))
            if (match := _COMMIT_FILE.match(info.base_name)) is not None
        ),
        reverse=True,
    )
    if limit is not None:
        versions = versions[:limit]
    commits: list[tuple[int, dict[str, Any]]] = []
    for version in versions:
        try:
            with fs.open_input_stream(f"{log}/{version:020d}.json") as stream:
                text = stream.read().decode("utf-8")
        except FileNotFoundError:
            continue
        info: dict[str, Any] = {}
        for line in text.splitlines():
            if '"commitInfo"' in line:
                action = json.loads(line)
                if isinstance(action.get("commitInfo"), dict):
                    info = action["commitInfo"]
                    break
        commits.append((version, info))
    return commits


def find_commit(path: str, write_id: str, *, limit: int = 100) -> int | None:
    """Version of the commit that write `write_id` made, searching the last `limit` commits."""
    for version, info in log_commits(path, limit=limit):
        facts = info.get(METADATA_KEY)
        if isinstance(facts, dict) and facts.get("write_id") == write_id:
            return version
    return None


def _commit_info(path: str, version: int) -> dict[str, Any]:
    for found, info in log_commits(path, limit=None):
        if found == version:
            facts = info.get(METADATA_KEY)
            return facts if isinstance(facts, dict) else {}
    return {}


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


def commit_files(
    path: str,
    files: Sequence[FileAdd],
    *,
    mode: str,
    schema: pa.Schema,
    partition_by: Sequence[str],
    write_id: str,
    app_id: str | None = None,
    app_version: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite_schema: bool = False,
    read_version: int | None = None,
    max_retries: int = 8,
) -> int | None:
    """Make ONE Delta commit adding `files` (already on disk under `path`); returns its version.

    Returns None without committing when there are no files, or when `app_id` already committed
    `app_version` or later (then the files are deleted). On failure the files are deleted and a
    SinkError (CommitConflictError for a lost race) is raised.

    read_version: the table version the write started from (-1: no table yet). An overwrite
    (of partitions, or of the whole table) is refused with CommitConflictError when a commit
    after it changed data in the partitions it replaces: the later writer must not silently
    replace rows it never saw. Commits elsewhere in the table are fine (the commit is retried
    on top of them). None: taken from `metadata["batchscore"]["read_version"]` (how
    `write_delta` passes it through Spark), else the version when the commit starts.
    """
    if mode not in WRITE_MODES:
        raise SinkError(f"Delta table {path}: unknown mode '{mode}'; use one of {WRITE_MODES}.")
    if not files:
        return None
    custom: dict[str, Any] = dict(metadata or {})
    carried = custom.pop(METADATA_KEY, None)
    if read_version is None and isinstance(carried, dict):
        value = carried.get("read_version")
        read_version = value if isinstance(value, int) else None
    if read_version is None:
        read_version = _current_version(path)
    custom[METADATA_KEY] = {
        "write_id": write_id,
        "mode": mode,
        "files": len(files),
        "rows": sum(f.rows for f in files),
        "read_version": read_version,
    }
    write = _Write(
        path=path,
        files=list(files),
        mode=mode,
        schema=schema,
        partition_by=list(partition_by),
        write_id=write_id,
        app_id=app_id,
        app_version=app_version,
        custom=custom,
        overwrite_schema=overwrite_schema,
        read_version=read_version,
    )
    return _commit_with_retries(write, max_retries=max_retries)


def _current_version(path: str) -> int:
    version = table_version(path)
    return -1 if version is None else version


@dataclass(frozen=True)
class _Write:
    """Everything one commit attempt needs (see commit_files)."""

    path: str
    files: list[FileAdd]
    mode: str
    schema: pa.Schema
    partition_by: list[str]
    write_id: str
    app_id: str | None
    app_version: int | None
    custom: dict[str, Any]
    overwrite_schema: bool
    read_version: int

    def properties(self) -> CommitProperties:
        txns = (
            [Transaction(self.app_id, int(self.app_version), int(time.time() * 1000))]
            if self.app_id is not None and self.app_version is not None
            else None
        )
        # An overwrite, or an idempotent append, commits exactly on the snapshot it checked
        # (conflicts, app transaction): delta-rs must not rebase it over a concurrent commit
        # it never checked; commit_files re-reads and re-checks instead. Plain appends
        # conflict with nothing, so delta-rs may rebase them.
        retries = None if self.mode == "append" and txns is None else 0
        return CommitProperties(
            custom_metadata=self.custom, app_transactions=txns, max_commit_retries=retries
        )


def _commit_with_retries(write: _Write, *, max_retries: int) -> int | None:
    path, files = write.path, write.files
    attempt = 0
    committed = False
    keep_files = False
    try:
        while True:
            attempt += 1
            creating = not is_delta_table(path)
            try:
                if creating:
                    _create(write)
                elif not _commit_once(write):
                    delete_files(path, [f.path for f in files])
                    return None
            except BatchScoreError:
                raise
            except Exception as exc:
                landed, known = _lookup_commit(path, write.write_id)
                if landed is not None:
                    committed = True
                    return landed
                if not known:
                    keep_files = True
                    raise SinkError(
                        f"Delta table {path}: the commit failed ({one_line(str(exc))}) and its "
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
                        f"a row and this {write.mode} write gave up ({one_line(str(exc))}); "
                        "nothing was committed and the new files were deleted, rerun the job."
                    ) from None
                raise SinkError(
                    f"Delta table {path}: the commit failed ({one_line(str(exc))}); nothing was "
                    "committed and the new files were deleted, fix the cause and rerun."
                ) from None
            committed = True
            break
    except BaseException:
        if not committed and not keep_files:
            delete_files(path, [f.path for f in files])
        raise
    landed, _ = _lookup_commit(path, write.write_id)
    return landed if landed is not None else table_version(path)


def _create(write: _Write) -> None:
    _check_partition_columns(write.path, write.schema, write.partition_by)
    create_table_with_add_actions(
        write.path,
        DeltaSchema.from_arrow(write.schema),
        [f.to_action() for f in write.files],
        mode="error",
        partition_by=list(write.partition_by) or None,
        commit_properties=write.properties(),
    )


def _commit_once(write: _Write) -> bool:
    """One attempt on the latest snapshot; False when the app transaction is already done."""
    path = write.path
    table = DeltaTable(path)
    check_table_features(table, path=path, for_write=True)
    if write.mode != "append":
        check_no_conflict(
            path,
            table_partition_columns(table),
            write.files,
            mode=write.mode,
            read_version=write.read_version,
            latest=int(table.version()),
        )
    if write.app_id is not None and write.app_version is not None:
        done = table.transaction_version(write.app_id)
        if done is not None and int(done) >= write.app_version:
            return False
    _check_against_table(
        table,
        write.schema,
        path=path,
        partition_by=write.partition_by,
        overwrite_schema=write.overwrite_schema and write.mode == "overwrite",
    )
    adds = [f.to_action() for f in write.files]
    if write.mode == "overwrite":
        table.create_write_transaction(
            [*adds],
            mode="overwrite",
            schema=DeltaSchema.from_arrow(write.schema)
            if write.overwrite_schema
            else table.schema(),
            partition_by=list(write.partition_by),
            commit_properties=write.properties(),
        )
        return True
    actions: list[AddAction | RemoveAction] = list(adds)
    if write.mode == "overwrite_partitions":
        actions = [*_remove_actions(table, write.files), *adds]
    table.create_write_transaction(
        actions,
        mode="append",
        schema=table.schema(),
        partition_by=list(write.partition_by),
        commit_properties=write.properties(),
    )
    return True


# --------------------------------------------------------------------------------------------
# write conflicts


def check_no_conflict(
    path: str,
    partition_columns: Sequence[str],
    files: Sequence[FileAdd],
    *,
    mode: str,
    read_version: int,
    latest: int,
) -> None:
    """Raise CommitConflictError when a commit in (read_version, latest] changed data that an
    overwrite of `files`' partitions (mode overwrite_partitions) or of the whole table (mode
    overwrite) would replace. Data-change-free commits (optimize, schema changes) are fine."""
    if latest <= read_version:
        return
    mine = {tuple(f.partition_values.get(c) for c in partition_columns) for f in files}
    for version in range(read_version + 1, latest + 1):
        actions = _log_actions(path, version)
        touched = _touched_partitions(actions, partition_columns)
        hit = touched if mode == "overwrite" else touched & mine
        if actions is None or hit:
            raise _conflict(path, partition_columns, sorted(hit, key=str), version, actions, mode,
                            read_version)  # fmt: skip


def _log_actions(path: str, version: int) -> list[dict[str, Any]] | None:
    """The actions of commit `version`, or None when its log file cannot be read."""
    fs, base = filesystem(path)
    try:
        with fs.open_input_stream(f"{base}/_delta_log/{version:020d}.json") as stream:
            text = stream.read().decode("utf-8")
    except (FileNotFoundError, OSError):
        return None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _touched_partitions(
    actions: list[dict[str, Any]] | None, partition_columns: Sequence[str]
) -> set[tuple[str | None, ...]]:
    """Partition keys in which `actions` added or removed rows (dataChange true)."""
    touched: set[tuple[str | None, ...]] = set()
    for action in actions or []:
        for kind in ("add", "remove"):
            body = action.get(kind)
            if isinstance(body, dict) and body.get("dataChange", True):
                values = body.get("partitionValues") or {}
                touched.add(tuple(values.get(c) for c in partition_columns))
    return touched


def _conflict(
    path: str,
    partition_columns: Sequence[str],
    keys: Sequence[tuple[str | None, ...]],
    version: int,
    actions: list[dict[str, Any]] | None,
    mode: str,
    read_version: int,
) -> CommitConflictError:
    info: Any = next((a["commitInfo"] for a in actions or [] if "commitInfo" in a), {})
    who = _describe_writer(info if isinstance(info, dict) else {})
    if actions is None:
        what = f"commit {version} cannot be read to rule out a conflict"
    else:
        where = ", ".join(_partition_label(partition_columns, k) for k in keys[:5])
        what = f"{where} {'was' if len(keys) == 1 else 'were'} changed by version {version}{who}"
    started = "before the table existed" if read_version < 0 else f"at version {read_version}"
    return CommitConflictError(
        f"Delta table {path}: another writer committed first: {what} after this {mode} write "
        f"read the table {started}, so committing would silently replace rows it never saw; "
        "nothing was committed and this write's files were deleted. Rerun the job once the "
        "other run has finished (an already committed run date is then skipped; --force "
        "replaces it)."
    )


def _partition_label(partition_columns: Sequence[str], key: tuple[str | None, ...]) -> str:
    if not partition_columns:
        return "the table"
    return "partition " + "/".join(
        f"{c}={_HIVE_NULL if v is None else v}" for c, v in zip(partition_columns, key, strict=True)
    )


def _describe_writer(info: Mapping[str, Any]) -> str:
    facts = info.get(METADATA_KEY)
    parts = []
    if isinstance(info.get("batchscore.run_id"), str):
        parts.append(f"run {info['batchscore.run_id']}")
    if isinstance(facts, dict) and facts.get("write_id"):
        parts.append(f"write {facts['write_id']}")
    if not parts and info.get("operation"):
        parts.append(str(info["operation"]))
    return f" ({', '.join(parts)})" if parts else ""


def _lookup_commit(path: str, write_id: str) -> tuple[int | None, bool]:
    """(version of write_id's commit or None, whether the log could be read at all)."""
    try:
        return find_commit(path, write_id), True
    except Exception:
        return None, False


# --------------------------------------------------------------------------------------------
# history


def history(path: str | os.PathLike[str], *, limit: int | None = None) -> list[dict[str, Any]]:
    """Commits of the table, newest first: version, timestamp (ms since epoch), operation,
    operation_parameters (without the bulky protocol/metadata JSON of a CREATE TABLE) and
    metadata (the custom commit metadata, as committed; the sink's own facts under
    "batchscore": write_id, mode, files, rows)."""
    table_path = normalize_path(path)
    if not is_delta_table(table_path):
        raise _not_a_table(table_path)
    result = []
    for version, commit in log_commits(table_path, limit=limit):
        result.append(
            {
                "version": version,
                "timestamp": commit.get("timestamp"),
                "operation": commit.get("operation"),
                "operation_parameters": {
                    k: v
                    for k, v in (commit.get("operationParameters") or {}).items()
                    if k not in ("metadata", "protocol")
                },
                "metadata": {k: v for k, v in commit.items() if k not in _STANDARD_COMMIT_KEYS},
            }
        )
    return result


# --------------------------------------------------------------------------------------------
# Spark entry points


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


def _options(**values: object) -> dict[str, str]:
    return {key: str(value) for key, value in values.items() if value is not None}


def write_delta(
    df: DataFrame,
    path: str | os.PathLike[str],
    *,
    mode: WriteMode,
    partition_by: Sequence[str] | None = None,
    app_id: str | None = None,
    app_version: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite_schema: bool = False,
    evolve_schema: bool = False,
    fill_missing: ColumnFilter | None = None,
    read_version: int | None = None,
    transform: BatchTransform | None = None,
    transform_schema: pa.Schema | None = None,
) -> CommitResult:
    """Write `df` to the Delta table at `path` in ONE commit, through the batchscore_delta source.

    mode: "append"; "overwrite_partitions" (replace exactly the partitions present in `df`);
    "overwrite" (the whole table). partition_by: partition columns (None: the table's own, or
    none for a new table). app_id/app_version: idempotency; a rerun with a version already
    committed for `app_id` commits nothing. metadata: JSON-able dict stored in the commit info.
    overwrite_schema: with mode="overwrite", allow replacing the table's schema.
    evolve_schema: columns of `df` the table lacks are added to it (nullable; old rows read
    null). The Spark data source's planning checks the schema before the data commit can carry
    a schema change, so the columns are added in a metadata-only commit just before the data
    commit. fill_missing: the table's columns this predicate accepts may be absent from `df`;
    they are written as nulls (a model dropped from a wide-layout spec).
    read_version: the table version the job's decisions were based on (default: the version
    now); an overwrite that a later commit to the same partitions would silently undo fails
    with CommitConflictError instead (see commit_files).
    transform, transform_schema: a fused write. Each write task applies `transform` (a picklable
    `Iterator[RecordBatch] -> Iterator[RecordBatch]`, e.g. the scoring task) to its batches of
    `df` and writes what it yields, of `transform_schema`, which is then the written schema: the
    transform's output never goes through the JVM. The transform reaches executors as a file
    under the table (see sinks/transform.py), deleted when the write ends, committed or not.
    """
    table_path = normalize_path(path)
    if mode not in WRITE_MODES:
        raise SinkError(
            f"Delta table {table_path}: unknown write mode '{mode}'; use one of "
            f"{', '.join(WRITE_MODES)}.{did_you_mean(str(mode), WRITE_MODES)}"
        )
    if (app_id is None) != (app_version is None):
        raise SinkError(
            f"Delta table {table_path}: app_id and app_version go together for idempotent "
            "writes; pass both or neither."
        )
    if app_version is not None and int(app_version) < 0:
        raise SinkError(
            f"Delta table {table_path}: app_version must be >= 0, got {app_version}; pass the "
            "run's sequence number."
        )
    if overwrite_schema and mode != "overwrite":
        raise SinkError(
            f"Delta table {table_path}: overwrite_schema=True needs mode='overwrite' (a partial "
            "write cannot change the table's schema); change the mode or drop overwrite_schema."
        )
    if (transform is None) != (transform_schema is None):
        raise SinkError(
            f"Delta table {table_path}: transform and transform_schema go together (the table "
            "gets the transform's output schema); pass both or neither."
        )
    _metadata_json(table_path, metadata)  # refuse bad metadata before any work
    if read_version is None:
        read_version = _current_version(table_path)
    from pyspark.sql.pandas.types import to_arrow_schema

    from batchscore.sinks.transform import (
        remove_transform,
        store_transform,
        transform_options,
        with_null_columns,
    )

    arrow_schema = (
        to_arrow_schema(df.schema, timezone="UTC") if transform_schema is None else transform_schema
    )
    diff = check_schema_compatible(
        table_path,
        arrow_schema,
        partition_by=partition_by,
        overwrite_schema=overwrite_schema,
        evolve_schema=evolve_schema,
        fill_missing=fill_missing,
    )
    if app_id is not None and app_version is not None:
        done = transaction_version(table_path, app_id)
        if done is not None and done >= int(app_version):
            return CommitResult(
                committed=False, version=None, mode=mode, reason="already_committed"
            )
    write_schema = arrow_schema
    if diff.missing and transform is not None:
        fields = table_arrow_schema(open_table(table_path))
        transform, write_schema = with_null_columns(
            transform, arrow_schema, [fields.field(n) for n in diff.missing]
        )
    elif diff.missing:
        df = _with_null_columns(df, table_path, list(diff.missing))
    if diff.added:
        add_columns(table_path, arrow_schema, metadata=metadata)
    meta_text = _metadata_json(table_path, metadata, sink_facts={"read_version": int(read_version)})
    write_id = uuid.uuid4().hex[:16]
    ref = (
        None
        if transform is None
        else store_transform(table_path, write_id, transform, write_schema)
    )
    options = _options(
        path=table_path,
        mode=mode,
        partition_by=None if partition_by is None else json.dumps(list(partition_by)),
        app_id=app_id,
        app_version=app_version,
        metadata=meta_text,
        write_id=write_id,
        overwrite_schema="true" if overwrite_schema else None,
        **transform_options(ref),
    )
    try:
        (
            df.write.format(SOURCE_NAME)
            .mode("overwrite" if mode == "overwrite" else "append")
            .options(**options)
            .save()
        )
    except Exception as exc:
        error = unwrap_spark_error(exc)
        if error is not None:
            raise error from None
        raise
    finally:
        if ref is not None:
            remove_transform(table_path, ref)
    version = find_commit(table_path, write_id)
    if version is None:
        reason: CommitReason = "empty"
        if app_id is not None and app_version is not None:
            done = transaction_version(table_path, app_id)
            if done is not None and done >= int(app_version):
                reason = "already_committed"
        return CommitResult(
            committed=False, version=None, write_id=write_id, mode=mode, reason=reason
        )
    info = _commit_info(table_path, version)
    return CommitResult(
        committed=True,
        version=version,
        files=int(info.get("files", 0)),
        rows=int(info.get("rows", 0)),
        write_id=write_id,
        mode=mode,
        metadata=dict(metadata or {}),
    )


def _metadata_json(
    path: str,
    metadata: Mapping[str, Any] | None,
    *,
    sink_facts: Mapping[str, Any] | None = None,
) -> str | None:
    """The metadata option's JSON; `sink_facts` travel under the reserved key to commit()."""
    if metadata is None and sink_facts is None:
        return None
    if metadata is not None and METADATA_KEY in metadata:
        raise SinkError(
            f"Delta table {path}: commit metadata key '{METADATA_KEY}' is reserved for the sink; "
            "rename that key."
        )
    payload = dict(metadata or {})
    if sink_facts is not None:
        payload[METADATA_KEY] = dict(sink_facts)
    try:
        return json.dumps(payload, allow_nan=False, default=str)
    except (TypeError, ValueError) as exc:
        raise SinkError(
            f"Delta table {path}: commit metadata is not JSON-serializable ({exc}); pass "
            "strings, numbers, lists and dicts only."
        ) from None


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
    applied when listing files. columns: read only these columns, in this order.
    """
    table_path = normalize_path(path)
    # Fail here, on the driver, with a plain error rather than at the first action, wrapped.
    table = open_table(table_path, version=version)
    if partition_filters:
        _filter_groups(
            table_path,
            partition_filters,
            table_partition_columns(table),
            _delta_primitive_types(table),
        )
    if columns is not None:
        names = table_arrow_schema(table).names
        for name in columns:
            if name not in names:
                raise SinkError(
                    f"Delta table {table_path}: column '{name}' does not exist (columns: "
                    f"{', '.join(names)});{did_you_mean(name, names)} fix `columns`."
                )
    del table
    options = _options(
        path=table_path,
        version=version,
        partition_filters=None
        if not partition_filters
        else json.dumps(_jsonable_filters(partition_filters)),
        columns=None if columns is None else json.dumps(list(columns)),
        min_partitions=_default_parallelism(spark),
    )
    try:
        return spark.read.format(SOURCE_NAME).options(**options).load()
    except Exception as exc:
        error = unwrap_spark_error(exc)
        if error is not None:
            raise error from None
        raise


def _default_parallelism(spark: SparkSession) -> int | None:
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:
        return None


def _jsonable_filters(filters: Sequence[Any]) -> list[Any]:
    def value(v: Any) -> Any:
        if isinstance(v, (list, tuple, set, frozenset)):
            return [value(x) for x in v]
        if isinstance(v, (date, datetime)):
            return partition_string(v)
        return v

    out: list[Any] = []
    for item in filters:
        if isinstance(item, (list, tuple)) and item and isinstance(item[0], (list, tuple)):
            out.append(_jsonable_filters(item))
        elif isinstance(item, (list, tuple)) and len(item) == 3:
            out.append([item[0], item[1], value(item[2])])
        else:
            out.append(item)
    return out


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
        raise _not_a_table(table_path)
    options = [f"path {_sql_string(table_path)}"]
    if version is not None:
        options.append(f"version {_sql_string(str(int(version)))}")
    kind = "GLOBAL TEMPORARY" if global_view else "TEMPORARY"
    statement = (
        f"CREATE OR REPLACE {kind} VIEW `{name}` USING {SOURCE_NAME} OPTIONS ({', '.join(options)})"
    )
    try:
        spark.sql(statement)
    except Exception as exc:
        error = unwrap_spark_error(exc)
        if error is not None:
            raise error from None
        raise


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
