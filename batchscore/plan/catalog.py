"""What the planner knows about input tables before any Spark job: schemas, versions, files.

Read with pyarrow and delta-rs on the driver, so a misspelled column or a model with the wrong
input count fails in a second, not after Spark has started scanning.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchscore.errors import DataError, SpecError
from batchscore.sinks.parquet_folder import inferred_partition_type
from batchscore.sinks.snapshot import partition_selection, partition_types
from batchscore.sinks.storage import delta_table, file_type, filesystem, is_object_store, join
from batchscore.spec.model import TableSpec

ColumnKind = Literal["scalar", "array", "vector"]
PartitionFilter = tuple[str, str, object]

_VECTOR_FIELDS = {"type", "size", "indices", "values"}


def column_kind(dtype: pa.DataType) -> ColumnKind | None:
    """How a column feeds a model: one input, a fixed-width array, a Spark ML vector, or not."""
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype):
        return "scalar"
    if pa.types.is_decimal(dtype):
        return "scalar"
    if (
        pa.types.is_list(dtype)
        or pa.types.is_large_list(dtype)
        or pa.types.is_fixed_size_list(dtype)
    ):
        value = dtype.value_type
        return "array" if pa.types.is_floating(value) or pa.types.is_integer(value) else None
    if (
        pa.types.is_struct(dtype)
        and {dtype.field(i).name for i in range(dtype.num_fields)} == _VECTOR_FIELDS
    ):
        return "vector"
    return None


@dataclass
class TableInfo:
    """A table as the planner sees it. Cheap facts are eager; file listings are lazy."""

    name: str
    spec: TableSpec
    schema: pa.Schema
    partition_columns: list[str]
    version: int | None
    table_id: str | None = None
    """A Delta table's id from its metadata (None for Parquet): another table created at the
    same path has another."""
    _widths: dict[str, int] = field(default_factory=dict)
    _nonzeros: dict[str, int] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.spec.path

    def has_column(self, column: str) -> bool:
        return column in self.schema.names

    def dtype(self, column: str) -> pa.DataType:
        return self.schema.field(column).type

    @cached_property
    def files(self) -> list[tuple[str, dict[str, str | None], int, int]]:
        """(path, partition values, size bytes, rows or -1) of every live data file."""
        if self.spec.format == "delta":
            table = delta_table(self.path)
            adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
            out = []
            for add in adds:
                parts = {c: _as_str(add.get(f"partition.{c}")) for c in self.partition_columns}
                rows = add.get("num_records")
                out.append(
                    (
                        str(add["path"]),
                        parts,
                        int(add["size_bytes"]),
                        int(rows if rows is not None else -1),
                    )
                )
            return out
        dataset = _parquet_dataset(self.path)
        fs, _ = filesystem(self.path)
        prefix = self.path.split("://", 1)[0] + "://" if is_object_store(self.path) else ""
        out = []
        for fragment in dataset.get_fragments():
            keys = ds.get_partition_keys(fragment.partition_expression)
            info = self._listing.get(fragment.path) or fs.get_file_info(fragment.path)
            out.append(
                (
                    prefix + fragment.path,  # a URI on object stores, an absolute path locally
                    {k: _as_str(v) for k, v in keys.items()},
                    int(info.size or 0),
                    -1,
                )
            )
        return out

    @cached_property
    def _listing(self) -> dict[str, pafs.FileInfo]:
        """Every file under a Parquet table's folder, from one recursive listing (sizes for
        `files`, modification times for `snapshot_key`)."""
        fs, base = filesystem(self.path)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return {i.path: i for i in infos if i.type == pafs.FileType.File}

    @cached_property
    def snapshot_key(self) -> str:
        """What identifies the data this table holds now: equal keys, equal data, so a check of
        the data can be remembered by it (plan.checked_keys). A Delta table: its id (a table
        deleted and created again at the same path has another), the version read and its
        live files. A Parquet folder: every file under it with its size and modification time
        (what make and Spark's own file index trust to tell a changed file)."""
        if self.spec.format == "delta":
            files = sorted((path, size, rows) for path, _, size, rows in self.files)
            return _digest(("delta", self.path, self.table_id, self.version, files))
        listed = sorted((i.path, i.size or 0, i.mtime_ns or 0) for i in self._listing.values())
        return _digest(("parquet", self.path, listed))

    def select_files(
        self, filters: list[PartitionFilter]
    ) -> list[tuple[str, dict[str, str | None], int, int]]:
        """The live files whose partitions `filters` (AND-ed) select, decided by the same
        evaluator as the Delta reader's (sinks/snapshot.py), so "nothing to score" here means
        the reader would find nothing either."""
        if not filters:
            return list(self.files)
        label = None if self.spec.format == "delta" else f"Parquet table {self.path}"
        selection = partition_selection(self.path, filters, self.partition_types, label=label)
        return [f for f in self.files if selection.accepts(f[1])]

    @cached_property
    def partition_types(self) -> dict[str, str]:
        """{partition column: the Delta type name its values compare by}: the table's own for a
        Delta table; for Hive-partitioned Parquet, the type Spark infers from the values."""
        if self.spec.format == "delta":
            return partition_types(self.schema, self.partition_columns)
        return {
            column: inferred_partition_type(f[1].get(column) for f in self.files)
            for column in self.partition_columns
        }

    def nonzeros(self, column: str) -> int:
        """Stored values per row of a vector column (sparse: its non-zeros), from the sample."""
        self.width(column)
        return self._nonzeros.get(column, self._widths[column])

    def width(self, column: str) -> int:
        """Model inputs one value of `column` expands into (1 for numbers)."""
        if column not in self._widths:
            self._widths[column] = self._sample_width(column)
        return self._widths[column]

    def _sample_width(self, column: str) -> int:
        kind = column_kind(self.dtype(column))
        if kind == "scalar":
            return 1
        dtype = self.dtype(column)
        if pa.types.is_fixed_size_list(dtype):
            return int(dtype.list_size)
        for path, _, _, _ in self.files:
            fs, location = filesystem(table_file(self.path, path))
            with fs.open_input_file(location) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.num_row_groups):
                    values = parquet.read_row_group(group, columns=[column]).column(0).drop_null()
                    if len(values) == 0:
                        continue
                    first = values[0].as_py()
                    if kind == "vector":
                        self._nonzeros[column] = max(1, len(first["values"]))
                        return int(first["size"]) if first["type"] == 0 else len(first["values"])
                    return len(first)
        raise DataError(
            f"Table '{self.name}' ({self.path}): column '{column}' has no non-null value to tell "
            "its width. Fill the column or remove it from the models' features."
        )


def _digest(value: object) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


def _as_str(value: object) -> str | None:
    return None if value is None else str(value)


def table_file(table_path: str, path: str) -> str:
    """Where a file of `files` lies: Delta paths are relative to the table, Parquet fragments'
    are absolute paths or URIs already."""
    if os.path.isabs(path) or is_object_store(path):
        return path
    return join(table_path, path)


def _parquet_dataset(path: str) -> ds.Dataset:
    fs, base = filesystem(path)
    return ds.dataset(
        base, filesystem=fs, format="parquet", partitioning="hive", exclude_invalid_files=True
    )


def _has_delta_log(path: str) -> bool:
    return bool(file_type(join(path, "_delta_log")) == pafs.FileType.Directory)


def describe_table(name: str, spec: TableSpec) -> TableInfo:
    """Schema, partition columns and version of one input table, or a clear error."""
    path = spec.path
    if "://" not in path and not os.path.exists(path.removeprefix("file:")):
        raise SpecError(
            f"Table '{name}': path '{path}' does not exist. Fix tables.{name}.path in the spec."
        )
    if spec.format == "delta":
        return _describe_delta(name, spec)
    return _describe_parquet(name, spec)


def _describe_delta(name: str, spec: TableSpec) -> TableInfo:
    from deltalake.exceptions import TableNotFoundError

    if "://" not in spec.path and not os.path.isdir(os.path.join(spec.path, "_delta_log")):
        hint = (
            " It holds Parquet files: set format: parquet."
            if glob.glob(os.path.join(spec.path, "**", "*.parquet"), recursive=True)
            else ""
        )
        raise SpecError(
            f"Table '{name}': '{spec.path}' is not a Delta table (no _delta_log folder).{hint}"
        )
    try:
        table = delta_table(spec.path)
    except TableNotFoundError:
        raise SpecError(f"Table '{name}': '{spec.path}' is not a Delta table.") from None
    schema = pa.schema(table.schema().to_arrow())
    metadata = table.metadata()
    parts = list(metadata.partition_columns)
    _check_declared_partitions(name, spec, parts)
    return TableInfo(name, spec, schema, parts, table.version(), str(metadata.id))


def _describe_parquet(name: str, spec: TableSpec) -> TableInfo:
    try:
        dataset = _parquet_dataset(spec.path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SpecError(f"Table '{name}': cannot read Parquet at '{spec.path}': {exc}.") from None
    if not dataset.files:
        raise SpecError(
            f"Table '{name}': no Parquet files under '{spec.path}'. "
            + (
                "It is a Delta table: set format: delta."
                if _has_delta_log(spec.path)
                else "Check the path."
            )
        )
    schema = dataset.schema
    parts = [
        f
        for f in schema.names
        if f in (dataset.partitioning.schema.names if dataset.partitioning else [])
    ]
    _check_declared_partitions(name, spec, parts)
    return TableInfo(name, spec, schema, parts, None)


def _check_declared_partitions(name: str, spec: TableSpec, actual: list[str]) -> None:
    missing = [c for c in spec.partition_by if c not in actual]
    if missing:
        raise SpecError(
            f"Table '{name}': partition_by lists {missing} but the table is partitioned by "
            f"{actual or 'nothing'}. Fix tables.{name}.partition_by."
        )
