"""CSR batches scored over their non-zeros by QuickScorer tables (compiled.sparse_rows).

The tables only change speed: every test compares the sums with the branchy code's
(`BATCHSCORE_SPARSE_ROWS=0`) bit for bit, and the kernel's output with the model's own.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier

from batchscore.kernels.trees import TreeEnsembleKernel
from batchscore.kernels.trees.compiled import cache, forest, sparse_rows
from batchscore.models import compile_from_object

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(forest, "_HANDLES", {})


def one_hot(n: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """A signed continuous input (negative thresholds: read in every row), a count, and 60
    one-hot flags in three groups; NaN stored in some rows, a few explicit zeros stored."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, 62))
    X[:, 0] = rng.normal(size=n)
    X[:, 1] = rng.poisson(0.7, size=n)
    for group in range(3):
        X[np.arange(n), 2 + 20 * group + rng.integers(0, 20, n)] = 1.0
    y = X[:, 0] + 0.5 * X[:, 1] + X[:, 2:12].sum(axis=1) - X[:, 30:40].sum(axis=1)
    y += 0.1 * rng.normal(size=n)
    X[rng.random(n) < 0.05, 0] = np.nan
    A = sp.csr_matrix(X)
    extra = rng.random(n) < 0.1  # stored zeros in column 1
    A = A.tolil()
    A[np.flatnonzero(extra), 1] = 0.0
    return sp.csr_matrix(A), y


def kernel_of(obj: Any) -> TreeEnsembleKernel:
    kernel = compile_from_object("m", obj).kernel
    assert isinstance(kernel, TreeEnsembleKernel) and kernel.compiled is not None
    return kernel


def both_ways(kernel: TreeEnsembleKernel, X: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The sums from the tables (whether or not the cost rule would pick them for this batch)
    and from the branchy code: the same bits."""
    compiled = kernel.compiled
    assert compiled is not None and compiled.sparse is not None
    monkeypatch.setenv(sparse_rows.ENV, "0")
    branchy = compiled.sums(X)
    tables = np.zeros_like(branchy)
    compiled._sparse_run(sparse_rows.SparseBatch.of(X, compiled.input_rule), tables)
    assert np.array_equal(branchy, tables)
    monkeypatch.setenv(sparse_rows.ENV, "1")
    return tables


def test_lightgbm_multiclass_same_bits_and_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = one_hot(6000)
    labels = np.digitize(y, np.quantile(y, [0.3, 0.7]))
    obj = lgb.LGBMClassifier(n_estimators=30, num_leaves=31, verbose=-1, n_jobs=1)
    kernel = kernel_of(obj.fit(X, labels))
    assert "sparse rows by QuickScorer tables" in kernel.describe()
    probe, _ = one_hot(3000, seed=1)
    compiled = kernel.compiled
    assert compiled is not None and compiled.sparse is not None
    tables = compiled.sparse_tables()
    assert tables.cheaper(sparse_rows.SparseBatch.of(probe, compiled.input_rule))
    assert both_ways(kernel, probe, monkeypatch).shape == (3000, 3)
    assert np.array_equal(compiled.sums(probe), compiled.sums(probe.toarray()))
    out = kernel.score(probe)
    np.testing.assert_allclose(out.probability, obj.predict_proba(probe), rtol=1e-12)
    assert list(out.label) == [str(v) for v in obj.predict(probe)]
    assert 0 in tables.dense  # the signed input is read in every row


def test_more_classes_than_the_narrow_sums_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond BS_NARROW outputs the leaves are added straight into the output rows: the same
    bits either way."""
    X, y = one_hot(4000, seed=7)
    labels = np.digitize(y, np.quantile(y, np.linspace(0, 1, 19)[1:-1]))
    assert len(np.unique(labels)) == 18
    obj = lgb.LGBMClassifier(n_estimators=4, num_leaves=8, verbose=-1, n_jobs=1)
    kernel = kernel_of(obj.fit(X, labels))
    probe, _ = one_hot(1500, seed=8)
    assert both_ways(kernel, probe, monkeypatch).shape == (1500, 18)
    np.testing.assert_allclose(
        kernel.score(probe).probability, obj.predict_proba(probe), rtol=1e-12
    )


def test_zero_as_missing_and_nan_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = one_hot(6000, seed=2)
    obj = lgb.LGBMRegressor(
        n_estimators=25, num_leaves=20, zero_as_missing=True, verbose=-1, n_jobs=1
    ).fit(X, y)
    kernel = kernel_of(obj)
    assert any(t.zero_missing.any() for t in kernel.ir.trees)
    probe, _ = one_hot(3000, seed=3)
    both_ways(kernel, probe, monkeypatch)
    np.testing.assert_allclose(kernel.score(probe).prediction, obj.predict(probe), rtol=1e-12)


def test_scikit_learn_float32_rule_and_wide_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    """GradientBoosting reads inputs as float32; a random forest classifier's leaves hold one
    value per class."""
    X, y = one_hot(4000, seed=4)
    X = sp.csr_matrix(np.nan_to_num(X.toarray()))  # these scikit-learn models refuse NaN
    gbm = GradientBoostingRegressor(n_estimators=30, max_leaf_nodes=16, random_state=0)
    kernel = kernel_of(gbm.fit(X.toarray(), y))
    probe = X[:1500].copy()
    probe.data = probe.data * (1 + 1e-9)  # values near float32 rounding
    both_ways(kernel, probe, monkeypatch)
    np.testing.assert_allclose(
        kernel.score(probe).prediction, gbm.predict(probe.toarray()), rtol=1e-12
    )
    labels = (y > np.median(y)).astype(int) + (y > np.quantile(y, 0.8))
    rf = RandomForestClassifier(n_estimators=40, max_leaf_nodes=48, random_state=0)
    kernel = kernel_of(rf.fit(X.toarray(), labels))
    sums = both_ways(kernel, X[:1500], monkeypatch)
    assert sums.shape[1] == 3
    np.testing.assert_allclose(
        kernel.score(X[:1500]).probability, rf.predict_proba(X[:1500].toarray()), rtol=1e-12
    )


def test_tables_travel_with_the_kernel_and_threads_split_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = one_hot(6000, seed=5)
    kernel = kernel_of(lgb.LGBMRegressor(n_estimators=20, verbose=-1, n_jobs=1).fit(X, y))
    probe, _ = one_hot(20000, seed=6)
    want = both_ways(kernel, probe, monkeypatch)
    shipped = pickle.loads(pickle.dumps(kernel))  # the tables stay behind: built where used
    monkeypatch.setattr(forest, "_HANDLES", {})
    monkeypatch.setattr(sparse_rows, "_BUILT", {})
    monkeypatch.setenv("BATCHSCORE_THREADS", "2")
    assert np.array_equal(shipped.compiled.sums(probe), want)
    assert list(sparse_rows._BUILT) == [shipped.compiled.sha256]


def test_dense_batches_and_busy_rows_keep_the_branchy_code() -> None:
    """Dense input never takes the tables; a CSR batch whose rows store every input of a
    model that reads them all costs more entries than nodes."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(4000, 30))
    y = X[:, :10].sum(axis=1)
    kernel = kernel_of(lgb.LGBMRegressor(n_estimators=60, verbose=-1, n_jobs=1).fit(X, y))
    compiled = kernel.compiled
    assert compiled is not None and compiled.sparse is not None
    compiled.sums(X)
    assert compiled.sha256 not in sparse_rows._BUILT  # dense rows never build the tables
    busy = sparse_rows.SparseBatch.of(sp.csr_matrix(X), compiled.input_rule)
    assert not compiled.sparse_tables().cheaper(busy)
    np.testing.assert_array_equal(compiled.sums(sp.csr_matrix(X)), compiled.sums(X))


def test_models_the_tables_cannot_hold() -> None:
    X, y = one_hot(3000, seed=8)
    big = lgb.LGBMRegressor(n_estimators=3, num_leaves=100, min_child_samples=2, verbose=-1)
    kernel = kernel_of(big.fit(X, y))
    assert kernel.compiled is not None and kernel.compiled.sparse is None
    cats = np.random.default_rng(9).integers(0, 6, size=(3000, 2)).astype(float)
    obj = lgb.LGBMRegressor(n_estimators=5, verbose=-1, min_child_samples=5)
    obj.fit(cats, cats[:, 0] * 2 + cats[:, 1], categorical_feature=[0, 1])
    kernel = kernel_of(obj)
    assert kernel.compiled is not None and kernel.compiled.sparse is None


def test_the_cache_key_covers_the_table_code(monkeypatch: pytest.MonkeyPatch) -> None:
    before = sparse_rows.fingerprint("model")
    monkeypatch.setattr(sparse_rows, "C_SOURCE", sparse_rows.C_SOURCE + "\n")
    assert sparse_rows.fingerprint("model") != before
