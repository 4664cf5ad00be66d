"""Profiles of flat tables (a training set, `batchscore profile --data`, `models register
--training-data`): every column of a supported type through one accumulator per column or
array position (monitor.accumulate), batch by batch so memory holds one batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchscore.errors import DataError, did_you_mean
from batchscore.monitor.accumulate import FeatureAccumulator, Floats, Mask
from batchscore.monitor.profile import FeatureProfile, Kind, Profile


def profile_arrow_table(
    table: pa.Table, features: Sequence[str] | None = None, *, source: str
) -> Profile:
    """Profile a flat table (a training set) batch by batch, with sketches: numeric columns as
    numeric, strings / booleans / dictionaries as categorical, fixed-length lists of numbers as
    one numeric profile per position `name[i]`. Without `features`, every column of those types
    (others, such as timestamps, are skipped); a named column of another type is a DataError."""
    return profile_batches(table.schema, table.to_batches(), features, source=source)


def profile_batches(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    features: Sequence[str] | None = None,
    *,
    source: str,
) -> Profile:
    """`profile_arrow_table` over a stream of batches of `schema` (a Spark task's input): one
    set of accumulators for the whole stream, so memory holds one batch at a time."""
    names = list(schema.names) if features is None else list(features)
    for name in names:
        if name not in schema.names:
            raise DataError(
                f"Column '{name}' is not in {source}.{did_you_mean(name, schema.names)} "
                f"Profile one of: {', '.join(schema.names[:20])}."
            )
    plans = {name: _column_kind(schema.field(name).type) for name in names}
    for name, kind in plans.items():
        if kind is None and features is not None:
            raise DataError(
                f"Column '{name}' of {source} has type {schema.field(name).type}, which "
                "cannot be profiled; profile numeric, string, boolean or list-of-number columns."
            )
    accumulators: dict[str, list[FeatureAccumulator]] = {}
    rows = 0
    for batch in batches:
        rows += batch.num_rows
        for name, kind in plans.items():
            if kind is not None:
                _add_column(accumulators, name, kind, batch.column(name), source)
    results: dict[str, FeatureProfile] = {}
    for name in names:
        for acc in accumulators.get(name, []):
            results[acc.feature] = acc.result()
    return Profile(features=results, rows=rows, source=source)


def _column_kind(kind: pa.DataType) -> str | None:
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "numeric"
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_dictionary(kind)
    ):
        return "categorical"
    listy = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if (listy or pa.types.is_fixed_size_list(kind)) and _column_kind(kind.value_type) == "numeric":
        return "list"
    return None


def _add_column(
    accumulators: dict[str, list[FeatureAccumulator]],
    name: str,
    kind: str,
    column: pa.Array,
    source: str,
) -> None:
    if kind == "list":
        _add_list(accumulators, name, column, source)
        return
    if name not in accumulators:
        cast_kind: Kind = "numeric" if kind == "numeric" else "categorical"
        accumulators[name] = [FeatureAccumulator(name, cast_kind, str(column.type), sketch=True)]
    acc = accumulators[name][0]
    if kind == "numeric":
        acc.add_numeric(*_as_floats(column))
    else:
        acc.add_categorical(column)


def _as_floats(column: pa.Array) -> tuple[Floats, Mask | None]:
    """float64 values (nulls as NaN) and the null mask (None without nulls)."""
    null = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
    if column.type != pa.float64():
        column = pc.cast(column, pa.float64(), safe=False)
    values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    return values, null


def _add_list(
    accumulators: dict[str, list[FeatureAccumulator]], name: str, column: pa.Array, source: str
) -> None:
    """One accumulator per position; every non-null list must have the same length."""
    lengths = pc.list_value_length(column).drop_null().to_numpy(zero_copy_only=False)
    if not len(lengths):
        return
    width = int(lengths[0]) if name not in accumulators else len(accumulators[name])
    if (lengths != width).any():
        raise DataError(
            f"Column '{name}' of {source} holds lists of lengths "
            f"{sorted(set(lengths.tolist()))[:5]}; profile array features of one fixed length."
        )
    if name not in accumulators:
        dtype = str(column.type.value_type)
        accumulators[name] = [
            FeatureAccumulator(f"{name}[{i}]", "numeric", dtype, sketch=True) for i in range(width)
        ]
    rows = len(column)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    flat, flat_null = _as_floats(pc.list_flatten(column))
    matrix = np.full((width, rows), np.nan)
    matrix[:, valid] = flat.reshape(-1, width).T
    nulls = np.ones((width, rows), dtype=np.bool_)
    nulls[:, valid] = False if flat_null is None else flat_null.reshape(-1, width).T
    for i, acc in enumerate(accumulators[name]):
        acc.add_numeric(matrix[i], nulls[i])
