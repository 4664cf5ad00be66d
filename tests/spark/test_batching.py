"""Batched scoring (batch_models) == each model scored alone.

Affine groups reorder the BLAS sums (rtol 1e-12); merged tree groups find the same exit leaves
and finish with each model's own code, so they are bit-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import scipy.sparse as sp
from deltalake import DeltaTable
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, PoissonRegressor, Ridge

from batchscore.kernels.affine import AffineKernel
from batchscore.kernels.batched import AffineGroup, finisher, stack
from batchscore.kernels.trees import TreeEnsembleKernel
from batchscore.kernels.trees.merged import TreeGroup
from batchscore.models import compile_from_object

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

WIDTH = 10
COLUMNS = [np.arange(0, 6), np.arange(3, 10), np.arange(0, 10), np.array([9, 1, 4, 2])]


def _data(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, WIDTH))
    X[:, 4] = rng.integers(0, 5, n)  # a categorical code for the HistGB model
    return X


def _fit(kind: str, X: np.ndarray) -> Any:
    y = X[:, 0] - X[:, 1] + 0.5 * X[:, 2] * (X[:, 3] > 0)
    labels = np.digitize(y, [-0.5, 0.5])
    return {
        "multinomial": lambda: LogisticRegression(max_iter=500).fit(X, labels),
        "binary": lambda: LogisticRegression(max_iter=500).fit(X, labels > 0),
        "ridge": lambda: Ridge().fit(X, y),
        "poisson": lambda: PoissonRegressor().fit(X, np.exp(y / 3)),
        "forest": lambda: RandomForestRegressor(n_estimators=6, max_depth=5, random_state=0).fit(
            X, y
        ),
        "histgb": lambda: HistGradientBoostingClassifier(max_iter=8, random_state=0).fit(X, labels),
        "lightgbm": lambda: lgb.LGBMClassifier(n_estimators=7, num_leaves=9, verbose=-1).fit(
            X, labels > 0
        ),
    }[kind]()


def _same(got: Any, want: Any, rtol: float) -> None:
    for what in ("prediction", "probability"):
        a, b = getattr(got, what), getattr(want, what)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=0 if rtol == 0 else 1e-15)
    assert (got.label is None) == (want.label is None)
    if got.label is not None:
        assert list(got.label) == list(want.label)


@pytest.mark.parametrize("sparse", [False, True])
def test_affine_group_equals_each_model(sparse: bool) -> None:
    X = _data()
    kinds = ["multinomial", "binary", "ridge", "poisson"]
    kernels = []
    for kind, cols in zip(kinds, COLUMNS, strict=True):
        kernel = compile_from_object(kind, _fit(kind, X[:, cols])).kernel
        assert isinstance(kernel, AffineKernel)
        kernels.append(kernel)
    test = _data(300, seed=1)
    test[np.random.default_rng(2).random(test.shape) < 0.05] = np.nan
    slices, at = [], 0
    for k in kernels:
        slices.append(slice(at, at + k.W.shape[1]))
        at += k.W.shape[1]
    group = AffineGroup(
        names=tuple(kinds),
        weights=stack(kernels, COLUMNS, WIDTH),
        slices=tuple(slices),
        columns=tuple(COLUMNS),
        finishers=tuple(finisher(k) for k in kernels),
    )
    union: Any = sp.csr_matrix(test) if sparse else test
    outputs = group.score(union, [True] * len(kernels))
    for kernel, cols, out in zip(kernels, COLUMNS, outputs, strict=True):
        _same(out, kernel.score(test[:, cols]), rtol=1e-12)


def test_tree_group_is_bit_identical_to_each_model() -> None:
    X = _data()
    kinds = ["forest", "histgb", "lightgbm", "forest"]
    kernels = []
    for kind, cols in zip(kinds, COLUMNS, strict=True):
        kernel = compile_from_object(kind, _fit(kind, X[:, cols]), strategy="traversal").kernel
        assert isinstance(kernel, TreeEnsembleKernel)
        kernels.append(kernel)
    group = TreeGroup.build(kinds, kernels, COLUMNS, WIDTH)
    test = _data(300, seed=3)
    test[np.random.default_rng(4).random(test.shape) < 0.05] = np.nan
    test[:5, 4] = 17.0  # an unseen category
    for out, kernel, cols in zip(group.score(test, [True] * 4), kernels, COLUMNS, strict=True):
        _same(out, kernel.score(test[:, cols]), rtol=0)


# ---------------------------------------------------------------- through Spark


def _outputs(path: Path) -> pa.Table:
    table = pa.table(DeltaTable(str(path)).to_pyarrow_table())
    return table.sort_by([("model", "ascending"), ("id", "ascending")])


@pytest.mark.spark
def test_batched_job_equals_unbatched_job(spark: Any, tmp_path: Path) -> None:
    import batchscore as bs
    from batchscore.jobs.run import run_job
    from tests.star import build_star

    star = build_star(tmp_path, seed=3, fact_rows=160, a_rows=6, b_rows=5, c_rows=3,
                      missing=0.1, nan_rate=0.05, mode="never", trees=True)  # fmt: skip
    text = star.spec.read_text()
    head, forest = text.split("  - name: forest\n")
    forest, tail = forest.split("output:")
    text = f"{head}  - name: forest\n{forest}  - name: forest2\n{forest}output:{tail}"
    for name in ("lgbm", "forest", "forest2"):
        text = text.replace(f"  - name: {name}\n", f"  - name: {name}\n    strategy: traversal\n")
    batched = tmp_path / "batched.yaml"
    batched.write_text(text.replace("output: {path: out,", "output: {path: out_batched,"))
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        text.replace("output: {path: out,", "output: {path: out_plain,").replace(
            "planner: {factorize: never}", "planner: {factorize: never, batch_models: false}"
        )
    )
    day = "2026-11-21"
    plan = bs.explain(bs.load_spec(batched, run_date=day))
    assert "batched group [ridge, multi, binary]" in plan
    assert "batched group [forest, forest2]" in plan and "one traversal leaf search" in plan
    assert "batched group" not in bs.explain(bs.load_spec(plain, run_date=day))
    for spec in (batched, plain):
        run_job(bs.load_spec(spec, run_date=day), spark=spark)
    a, b = _outputs(tmp_path / "out_batched"), _outputs(tmp_path / "out_plain")
    assert a.num_rows == b.num_rows == 6 * 80
    assert a["label"].to_pylist() == b["label"].to_pylist()
    assert a["model"].to_pylist() == b["model"].to_pylist()
    trees = pc.is_in(a["model"], pa.array(["lgbm", "forest", "forest2"])).to_numpy(
        zero_copy_only=False
    )
    pa_, pb = (np.array(t["prediction"].to_pylist(), dtype=float) for t in (a, b))
    np.testing.assert_array_equal(pa_[trees], pb[trees])
    np.testing.assert_allclose(pa_[~trees], pb[~trees], rtol=1e-12, atol=1e-15)
