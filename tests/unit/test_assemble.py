"""Arrow batch -> model matrix (physical.assemble): scalars, arrays and Spark ML vectors in
order, nulls as NaN, sparse kept sparse, and one stacked matrix shared by the models of a
batch that read the same columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from batchscore.datasets._write import VECTOR_STRUCT
from batchscore.physical.assemble import Column, assemble

WIDE = 80  # >= SPARSE_MIN_WIDTH: the vector stays sparse


def _batch() -> pa.RecordBatch:
    vectors = [
        {"type": 0, "size": WIDE, "indices": [i % WIDE], "values": [float(i)]} for i in range(6)
    ]
    vectors[2] = None
    return pa.RecordBatch.from_pydict(
        {
            "x": pa.array([1.0, None, 3.0, 4.0, 5.0, 6.0]),
            "arr": pa.array([[float(i), -float(i)] for i in range(6)], pa.list_(pa.float64())),
            "vec": pa.array(vectors, VECTOR_STRUCT),
        }
    )


COLUMNS = (
    Column("x", "t.x", "scalar", 1),
    Column("arr", "t.arr", "array", 2),
    Column("vec", "t.vec", "vector", WIDE),
)


def test_blocks_stack_in_order_with_nulls_as_nan_and_sparse_kept_sparse() -> None:
    matrix = assemble(_batch(), COLUMNS, {})
    assert sp.issparse(matrix) and matrix.shape == (6, 3 + WIDE)
    dense = matrix.toarray()
    assert np.isnan(dense[1, 0]) and dense[3, 0] == 4.0
    assert dense[4, 1:3].tolist() == [4.0, -4.0]
    assert dense[5, 3 + 5] == 5.0 and np.isnan(dense[2, 3:]).all()
    # canonical CSR even with a null vector's NaN row (the tree kernels then take it as is)
    assert matrix.has_canonical_format


def test_row_max_is_numpys_row_max() -> None:
    from batchscore.kernels.base import row_max

    rng = np.random.default_rng(4)
    for shape in ((50, 1), (50, 7), (50, 40), (0, 3)):
        x = rng.normal(size=shape)
        if x.size:
            x[3, -1], x[4, 0], x[5, 0] = np.nan, np.inf, -np.inf
        assert np.array_equal(row_max(x), x.max(axis=1), equal_nan=True), shape


def test_models_reading_the_same_columns_share_one_stacked_matrix() -> None:
    batch, cache = _batch(), {}
    first = assemble(batch, COLUMNS, cache)
    again = assemble(batch, COLUMNS, cache)
    assert again is first
    other = assemble(batch, COLUMNS[:2], cache)  # another set of columns: its own matrix
    assert not sp.issparse(other) and other.shape == (6, 3)
    np.testing.assert_array_equal(other, first.toarray()[:, :3])
    fresh = assemble(batch, COLUMNS, {})
    np.testing.assert_array_equal(fresh.toarray(), first.toarray())
