"""Compiled trees in Spark executors: they load the library bytes shipped with the kernel and
never compile (tests/unit/test_compiled_trees.py covers the rest of compiled code)."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest

from batchscore.kernels.trees.compiled import toolchain
from tests.unit.test_compiled_trees import compiled, data
from tests.unit.test_sparse_rows import one_hot

pytestmark = pytest.mark.spark


def test_spark_executors_load_the_shipped_library(spark: Any) -> None:
    """In a Spark task (marked as an executor, compiling forbidden) the kernel scores from the
    bytes it was shipped with: no fallback, no compile, the model's own probabilities."""
    X, y = data(n=2000)
    obj = lgb.LGBMClassifier(n_estimators=20, verbose=-1, n_jobs=1).fit(X, y)
    kernel = compiled(obj)
    table = pa.table({f"f{i}": X[:, i] for i in range(X.shape[1])})
    df = spark.createDataFrame(table.to_pandas()).repartition(2)

    def score(batches: Any) -> Any:
        import os

        from batchscore.kernels.trees.compiled import forest as fmod
        from batchscore.physical.score import limit_threads

        limit_threads(1)
        for batch in batches:
            M = np.column_stack([batch.column(i).to_numpy() for i in range(batch.num_columns)])
            out = kernel.score(M)
            yield pa.RecordBatch.from_pydict(
                {
                    "p": out.probability[:, 1],
                    "marked": [os.environ.get(toolchain.EXECUTOR_ENV)] * len(M),
                    "loaded": [kernel.compiled.sha256 in fmod._HANDLES] * len(M),
                    "broken": [kernel._compiled_broken] * len(M),
                    **{f"f{i}": M[:, i] for i in range(M.shape[1])},
                }
            )

    schema = "p double, marked string, loaded boolean, broken string, " + ", ".join(
        f"f{i} double" for i in range(X.shape[1])
    )
    rows = df.mapInArrow(score, schema).toPandas()
    assert set(rows["marked"]) == {"1"} and set(rows["loaded"]) == {True}
    assert set(rows["broken"]) == {""}
    M = rows[[f"f{i}" for i in range(X.shape[1])]].to_numpy()
    np.testing.assert_allclose(rows["p"], obj.predict_proba(M)[:, 1], rtol=1e-12, atol=1e-15)


def test_spark_executors_build_sparse_tables_where_used(spark: Any) -> None:
    """CSR batches in a Spark task take the QuickScorer tables, built there from the shipped
    model (building them is not compiling): the model's own probabilities."""
    X, y = one_hot(3000)
    labels = (y > np.median(y)).astype(int)
    obj = lgb.LGBMClassifier(n_estimators=30, verbose=-1, n_jobs=1).fit(X, labels)
    kernel = compiled(obj)
    assert kernel.compiled is not None and kernel.compiled.sparse is not None
    dense = X.toarray()
    table = pa.table({f"f{i}": dense[:, i] for i in range(dense.shape[1])})
    df = spark.createDataFrame(table.to_pandas()).repartition(2)

    def score(batches: Any) -> Any:
        import scipy.sparse as sp

        from batchscore.kernels.trees.compiled import sparse_rows as srows
        from batchscore.physical.score import limit_threads

        limit_threads(1)
        for batch in batches:
            M = np.column_stack(
                [batch.column(i).to_numpy(zero_copy_only=False) for i in range(batch.num_columns)]
            )  # NaN arrives as null
            out = kernel.score(sp.csr_matrix(M))
            yield pa.RecordBatch.from_pydict(
                {
                    "p": out.probability[:, 1],
                    "built": [kernel.compiled.sha256 in srows._BUILT] * len(M),
                    **{f"f{i}": M[:, i] for i in range(M.shape[1])},
                }
            )

    schema = "p double, built boolean, " + ", ".join(f"f{i} double" for i in range(X.shape[1]))
    rows = df.mapInArrow(score, schema).toPandas()
    assert set(rows["built"]) == {True}
    M = rows[[f"f{i}" for i in range(X.shape[1])]].to_numpy()
    np.testing.assert_allclose(rows["p"], obj.predict_proba(M)[:, 1], rtol=1e-12, atol=1e-15)
