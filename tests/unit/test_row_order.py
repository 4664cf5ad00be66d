"""Compiled forests walk rows sorted by the input most node tests read (compiled.row_order).

The order only changes speed: every test compares the sums with the walk in table order
(`BATCHSCORE_ROW_ORDER=0`) bit for bit, and the kernel's output with the model's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import scipy.sparse as sp

from batchscore.kernels.trees import TreeEnsembleKernel
from batchscore.kernels.trees.compiled import cache, codegen, forest, row_order
from batchscore.models import compile_from_object

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROWS = 3 * row_order.MIN_ROWS


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(forest, "_HANDLES", {})


def dominated(n: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Column 0 continuous and decisive, the others one-hot flags that matter a little:
    Walmart's shape (a sales figure and indicator columns)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, width))
    X[:, 0] = rng.normal(size=n)
    X[np.arange(n), rng.integers(1, width, n)] = 1.0
    y = np.sin(3 * X[:, 0]) + 0.3 * X[:, 1:6].sum(axis=1) + 0.1 * rng.normal(size=n)
    return X, y


def kernel_of(obj: Any) -> TreeEnsembleKernel:
    kernel = compile_from_object("m", obj).kernel
    assert isinstance(kernel, TreeEnsembleKernel) and kernel.compiled is not None
    return kernel


def both_orders(kernel: TreeEnsembleKernel, X: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The kernel's sums in table order and in row order (they must be the same bits)."""
    assert kernel.compiled is not None
    monkeypatch.setenv("BATCHSCORE_ROW_ORDER", "0")
    plain = kernel.compiled.sums(X)
    monkeypatch.setenv("BATCHSCORE_ROW_ORDER", "1")
    ordered = kernel.compiled.sums(X)
    assert np.array_equal(plain, ordered)
    return ordered


def test_a_dominant_input_orders_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = dominated(8000, 12)
    obj = lgb.LGBMRegressor(n_estimators=40, num_leaves=15, verbose=-1, n_jobs=1).fit(X, y)
    kernel = kernel_of(obj)
    assert kernel.compiled is not None
    order = kernel.compiled.info.order
    assert order is not None and order.column == 0 and order.share >= row_order.MIN_SHARE
    assert "rows walked in order of input 0" in kernel.describe()
    probe, _ = dominated(ROWS, 12, seed=1)
    probe[::7, 0] = np.nan  # NaN rows sort last and take the model's missing branch
    both_orders(kernel, probe, monkeypatch)
    np.testing.assert_allclose(kernel.score(probe).prediction, obj.predict(probe), rtol=1e-12)


def test_multiclass_sums_return_to_their_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = dominated(8000, 12)
    labels = np.digitize(y, np.quantile(y, [0.33, 0.66]))
    obj = lgb.LGBMClassifier(n_estimators=15, num_leaves=15, verbose=-1, n_jobs=1)
    kernel = kernel_of(obj.fit(X, labels))
    assert kernel.compiled is not None and kernel.compiled.info.order is not None
    probe, _ = dominated(ROWS, 12, seed=2)
    assert both_orders(kernel, probe, monkeypatch).shape == (ROWS, 3)
    got = kernel.score(probe)
    assert np.array_equal(got.label, np.asarray([str(v) for v in obj.predict(probe)]))
    np.testing.assert_allclose(got.probability, obj.predict_proba(probe), rtol=1e-12)


def test_sparse_wide_and_threaded_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The order column found in a compacted sparse block, in a dense matrix the compiled code
    gathers from, and split between two threads."""
    X, y = dominated(8000, 300)
    obj = lgb.LGBMRegressor(n_estimators=30, num_leaves=15, verbose=-1, n_jobs=1).fit(X, y)
    kernel = kernel_of(obj)
    assert kernel.compiled is not None and kernel.compiled.used is not None
    assert kernel.compiled.info.order is not None
    probe, _ = dominated(ROWS, 300, seed=3)
    dense = both_orders(kernel, probe, monkeypatch)
    assert np.array_equal(both_orders(kernel, sp.csr_matrix(probe), monkeypatch), dense)
    assert np.array_equal(both_orders(kernel, np.asfortranarray(probe), monkeypatch), dense)
    monkeypatch.setenv("BATCHSCORE_THREADS", "2")
    assert np.array_equal(both_orders(kernel, probe, monkeypatch), dense)


def test_no_dominant_input_keeps_table_order() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(6000, 10))
    obj = lgb.LGBMRegressor(n_estimators=30, num_leaves=15, verbose=-1, n_jobs=1)
    kernel = kernel_of(obj.fit(X, X.sum(axis=1)))
    assert kernel.compiled is not None and kernel.compiled.info.order is None
    assert "rows walked" not in kernel.describe()


def test_word_tests_and_branch_free_trees_do_not_count() -> None:
    """A factorized fact side's word tests read joined words, never a value: they do not
    make their column the order; nor do branch-free trees, which never branch on data."""
    X, y = dominated(4000, 12)
    obj = lgb.LGBMRegressor(n_estimators=20, num_leaves=15, verbose=-1, n_jobs=1).fit(X, y)
    ens = kernel_of(obj).ir
    forms = codegen.forms(ens)
    chosen = row_order.choose(ens, forms)
    assert chosen is not None and chosen.column == 0
    words: codegen.WordTests = {
        (t, i): ((0, 1),)
        for t, tree in enumerate(ens.trees)
        for i in range(tree.n_internal)
        if tree.feature[i] == 0
    }
    without = row_order.choose(ens, forms, words)
    assert words and (without is None or without.column != 0)
    assert row_order.choose(ens, tuple(codegen.BRANCHLESS for _ in forms)) is None
