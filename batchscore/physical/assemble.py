"""Arrow columns -> the float64 matrix a kernel scores. Runs on executors, once per batch.

Nulls become NaN (the materialized left join's missing values), arrays and Spark ML vectors
expand in order into their width, and sparse vectors stay sparse end to end so a one-hot
dimension of thousands of columns costs its non-zeros, not its width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from batchscore.errors import DataError
from batchscore.kernels.base import Matrix

Block: TypeAlias = "np.ndarray | sp.csr_matrix"
SPARSE_MIN_WIDTH = 64


@dataclass(frozen=True)
class Column:
    """One feature column of a batch: its name in the joined frame, its kind and width."""

    ref: str
    label: str
    kind: str
    width: int


def assemble(batch: pa.RecordBatch, columns: Sequence[Column], cache: dict[str, Block]) -> Matrix:
    """The model matrix for `columns`, in order. `cache` shares blocks between models of a batch,
    and the stacked matrix between models that read the same columns (a sparse stack costs more
    than scoring a GLM on it). Kernels never write into their input."""
    if len(columns) > 1:
        key = MATRIX_KEY + "\x1f".join(c.ref for c in columns)
        if key not in cache:
            cache[key] = _stacked(batch, columns, cache)
        return cache[key]
    return _stacked(batch, columns, cache)


MATRIX_KEY = "\x1fmatrix\x1f"
"""Cache keys of stacked matrices start with this (no column name holds \\x1f)."""


def _stacked(batch: pa.RecordBatch, columns: Sequence[Column], cache: dict[str, Block]) -> Matrix:
    blocks = []
    for column in columns:
        if column.ref not in cache:
            cache[column.ref] = column_block(
                batch.column(batch.schema.get_field_index(column.ref)), column
            )
        blocks.append(cache[column.ref])
    if len(blocks) == 1:
        return blocks[0]
    if any(sp.issparse(b) for b in blocks):
        return sp.hstack([b if sp.issparse(b) else _csr(b) for b in blocks], format="csr")
    return _side_by_side(blocks)


def _csr(block: np.ndarray) -> sp.csr_matrix:
    """A dense block as CSR of its non-zeros (NaN kept), in one pass over a flat mask: half
    of scipy's conversion time on Walmart's 53-wide one-hot block (1.2 ms against 2.7 ms a
    10,000-row batch)."""
    n, width = block.shape
    nonzero = block != 0
    flat = np.flatnonzero(nonzero)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nonzero.sum(axis=1), out=indptr[1:])
    values = np.ascontiguousarray(block).reshape(-1)[flat]
    return sp.csr_matrix((values, flat % max(width, 1), indptr), shape=block.shape)


def _side_by_side(blocks: list[Block]) -> np.ndarray:
    """One C-ordered matrix of dense blocks: each block copied once, into its columns."""
    widths = [b.shape[1] for b in blocks]
    out = np.empty((blocks[0].shape[0], sum(widths)))
    at = 0
    for block, width in zip(blocks, widths, strict=True):
        out[:, at : at + width] = block
        at += width
    return out


def column_block(array: pa.Array | pa.ChunkedArray, column: Column) -> Block:
    """The block of one column; row i of it depends on row i of `array` alone (so a block of a
    dimension's rows gathered by fact row is the block of the gathered rows)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if column.kind == "scalar":
        return _scalar(array).reshape(-1, 1)
    if column.kind == "array":
        return _array(array, column)
    return _vector(array, column)


def _scalar(array: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(array.type):
        array = pc.cast(array, pa.int8())
    values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def _array(array: pa.Array, column: Column) -> np.ndarray:
    n = len(array)
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    valid = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    bad = valid & (lengths != column.width)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"Feature '{column.label}' has {int(lengths[row])} values in a row but the model was "
            f"planned with {column.width}. Array features must have the same length in every row."
        )
    flat = _scalar(pc.list_flatten(array))
    if valid.all():  # no null rows: the flattened values already are the matrix (no copy)
        return flat.reshape(n, column.width)
    out = np.full((n, column.width), np.nan)
    out[valid] = flat.reshape(-1, column.width) if column.width else flat.reshape(-1, 0)
    return out


def _vector(array: pa.Array, column: Column) -> Block:
    """Spark ML vectors: struct<type: 0 sparse | 1 dense, size, indices, values>."""
    n, width = len(array), column.width
    valid = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    kinds = pc.fill_null(array.field("type"), 1).to_numpy(zero_copy_only=False)
    sizes = array.field("size")
    values = array.field("values")
    lengths = (
        pc.fill_null(pc.list_value_length(values), 0)
        .to_numpy(zero_copy_only=False)
        .astype(np.int64)
    )
    lengths[~valid] = 0
    _check_vector_width(column, valid, kinds, sizes, lengths)
    flat_values = _scalar(pc.list_flatten(values)) if lengths.sum() else np.zeros(0)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    row_of_element = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(flat_values)) - indptr[:-1][row_of_element]
    sparse_rows = valid & (kinds == 0)
    if sparse_rows.any():
        element_sparse = np.repeat(sparse_rows, lengths)
        cols[element_sparse] = pc.list_flatten(
            array.field("indices").filter(pa.array(sparse_rows))
        ).to_numpy(zero_copy_only=False)
    matrix = sp.csr_matrix((flat_values, cols, indptr), shape=(n, width))
    if not valid.all():
        missing = np.flatnonzero(~valid)
        fill = sp.csr_matrix(
            (
                np.full(len(missing) * width, np.nan),
                np.tile(np.arange(width), len(missing)),
                np.arange(0, (len(missing) + 1) * width, width),
            ),
            shape=(len(missing), width),
        )
        pad = sp.lil_matrix((n, len(missing)))
        pad[missing, np.arange(len(missing))] = 1.0
        matrix = (matrix + pad.tocsr() @ fill).tocsr()
        matrix.sort_indices()  # scipy's sum leaves rows unsorted; kernels want canonical CSR
    if width < SPARSE_MIN_WIDTH:
        return np.asarray(matrix.toarray())
    return sp.csr_matrix(matrix)


def _check_vector_width(
    column: Column, valid: np.ndarray, kinds: np.ndarray, sizes: pa.Array, lengths: np.ndarray
) -> None:
    size = pc.fill_null(sizes, -1).to_numpy(zero_copy_only=False)
    widths = np.where(kinds == 0, size, lengths)
    bad = valid & (widths != column.width)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"Feature '{column.label}' holds a vector of size {int(widths[row])} but the model was "
            f"planned with {column.width}. Vectors must have the same size in every row."
        )
