"""What a Delta table's columns may be, and whether a write's columns fit an existing table.

Arrow types from Spark, pandas or a fused transform are normalized to the one Arrow form the
sink writes (`delta_arrow_schema`); a write is checked against the table by column name and
Delta type (`check_schema_compatible`), and, when its `SchemaPolicy` allows, new columns are
added in a metadata-only commit first (`add_columns`). Table features the sink would get wrong
(column mapping, deletion vectors, constraints) are refused here too (`check_table_features`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.transaction import CommitProperties

from batchscore.errors import SinkError, did_you_mean, first_line
from batchscore.sinks.ownership import check_table_folder
from batchscore.sinks.storage import delta_table, is_delta_table, normalize_path, open_table

ColumnFilter = Callable[[str], bool]
"""Which of the table's columns a write may leave out (they are written as nulls)."""


@dataclass(frozen=True)
class SchemaPolicy:
    """How far a write's columns may differ from the table's. A column's type never changes in
    place: that is refused whatever the policy says."""

    overwrite_schema: bool = False
    """With mode "overwrite": the write replaces the table's schema (partition columns kept)."""
    evolve_schema: bool = False
    """Columns of the write that the table lacks are added to it (nullable; old rows read null)."""
    fill_missing: ColumnFilter | None = None
    """The table's columns this predicate accepts may be absent from the write; they are written
    as nulls (a model dropped from a wide-layout spec)."""


STRICT = SchemaPolicy()
"""Same columns, same types (nullability and order may differ)."""


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
            f"Delta table {path}: the schema cannot be stored in Delta ({first_line(str(exc))}); "
            "cast the offending column to a supported type before writing."
        ) from None
    return result


def delta_fields(schema_json: str) -> list[dict[str, Any]]:
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


def check_partition_columns(path: str, schema: pa.Schema, partition_by: Sequence[str]) -> None:
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
    old = {f["name"]: _strip(f["type"]) for f in delta_fields(table.schema().to_json())}
    new = {
        f["name"]: _strip(f["type"]) for f in delta_fields(DeltaSchema.from_arrow(schema).to_json())
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
            "schema_policy=SchemaPolicy(evolve_schema=True))), or write to a new path"
        )
    absent = {n: t for n, t in diff.missing.items() if fill_missing is None or not fill_missing(n)}
    for name, dtype in absent.items():
        problems.append(f"column '{name}' ({render_delta_type(dtype)}) is missing from the data")
    if absent:
        fixes.append("write every column of the table")
    return problems, fixes


def check_against_table(
    table: DeltaTable,
    schema: pa.Schema,
    *,
    path: str,
    partition_by: Sequence[str] | None,
    policy: SchemaPolicy,
) -> SchemaDiff:
    """Raise SinkError when `schema` (normalized) or `partition_by` do not fit `table`;
    otherwise return how the write differs from the table (what evolution would add)."""
    table_partitions = list(table.metadata().partition_columns)
    if partition_by is not None and list(partition_by) != table_partitions:
        raise SinkError(
            f"Delta table {path} is partitioned by {table_partitions} but the write asks for "
            f"{list(partition_by)}; pass partition_by={table_partitions} or write to a new path."
        )
    if policy.overwrite_schema:
        missing = [name for name in table_partitions if name not in schema.names]
        if missing:
            raise SinkError(
                f"Delta table {path}: the data lacks partition column(s) {missing}; keep them, "
                "or write to a new path to change the partitioning."
            )
        return SchemaDiff({}, {}, {})
    diff = schema_diff(table, schema)
    # A partition column can never be filled with nulls: the rows would land in another
    # partition (and check_partition_columns refuses the write anyway).
    fill = policy.fill_missing
    keep = None if fill is None else _not_in(table_partitions, fill)
    problems, fixes = _schema_problems(diff, evolve_schema=policy.evolve_schema, fill_missing=keep)
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
    policy: SchemaPolicy = STRICT,
) -> SchemaDiff:
    """Raise SinkError unless data of `arrow_schema` can be written to the table at `path`.

    Checks that every type is storable and that the partition columns exist and are of a
    partitionable type. Against an existing table: same column names and types (nullability may
    differ, order may differ) and the same partition columns. `partition_by=None` means "the
    table's own partitioning" for an existing table and "unpartitioned" for a new one.
    `policy` says which differences are allowed (see SchemaPolicy); a type change is refused in
    every case. Returns the differences (empty for a new table).

    A new table is only created in a folder batchscore owns: a folder that exists, is not a
    Delta table and holds files batchscore did not write is refused (ownership.check_table_folder;
    every write path, the data source's planning included, comes through here first).
    """
    table_path = normalize_path(path)
    schema = delta_arrow_schema(arrow_schema, path=table_path)
    diff = SchemaDiff({}, {}, {})
    if is_delta_table(table_path):
        table = delta_table(table_path)
        check_table_features(table, path=table_path, for_write=True)
        diff = check_against_table(
            table, schema, path=table_path, partition_by=partition_by, policy=policy
        )
        parts = list(partition_by) if partition_by is not None else table_partition_columns(table)
    else:
        check_table_folder(table_path)
        parts = list(partition_by or [])
    check_partition_columns(table_path, schema, parts)
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
    table = open_table(table_path, fresh=True)  # it alters the table through this handle
    check_table_features(table, path=table_path, for_write=True)
    everything = SchemaPolicy(evolve_schema=True, fill_missing=lambda _: True)
    diff = check_against_table(table, schema, path=table_path, partition_by=None, policy=everything)
    if not diff.added:
        return []
    names = [name for name in schema.names if name in diff.added]
    fields = list(DeltaSchema.from_arrow(pa.schema([schema.field(n) for n in names])).fields)
    custom = dict(metadata or {})
    custom["batchscore.schema_evolution"] = {"added": names}
    try:
        table.alter.add_columns(fields, commit_properties=CommitProperties(custom_metadata=custom))
    except Exception as exc:
        again = schema_diff(delta_table(table_path), schema)
        if not set(names) & set(again.added) and not again.changed:
            return []  # another writer added exactly these columns first
        raise SinkError(
            f"Delta table {table_path}: adding column(s) {names} failed ({first_line(str(exc))}); "
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
