"""Tree ensembles split by table (factorized QuickScorer) == the model's own output. No Spark.

Every model input is given to a random group (fact or one of up to three dimensions); each
dimension row is scored once by its TablePartial, the words and sums are "joined" back by key,
and the fact-side kernel must reproduce the model at rtol 1e-9 with identical labels, including
rows whose key has no dimension row (the materialized left join's all-null features), NaNs and
unseen categories.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import (
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)

from batchscore.kernels.trees import TreeEnsembleKernel
from batchscore.kernels.trees.factorized import FACT, factorize_ensemble
from batchscore.models import compile_from_object
from tests.spark.test_factorize import _variant

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

N_FEATURES = 8
CATEGORICAL = (2, 5)


def _data(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    for c in CATEGORICAL:
        X[:, c] = rng.integers(0, 6, n)
    y = (X[:, 0] + X[:, 1] * X[:, 3] + (X[:, 2] > 2) + rng.normal(0, 0.3, n) > 0.5).astype(int)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X, y, (X[:, 0] * 2 + X[:, 4]).round(6)


def _models(seed: int) -> dict[str, Any]:
    X, y, r = _data(seed)
    ok = ~np.isnan(r)
    Xc = np.nan_to_num(X)
    return {
        "lightgbm": lgb.LGBMClassifier(
            n_estimators=30, num_leaves=40, min_child_samples=5, verbose=-1, random_state=seed
        ).fit(X, y, categorical_feature=list(CATEGORICAL)),
        "lightgbm_multi": lgb.LGBMClassifier(
            n_estimators=10, num_leaves=8, verbose=-1, random_state=seed
        ).fit(X, (np.nan_to_num(X[:, 0]) * 3).astype(int) % 3),
        "histgb": HistGradientBoostingClassifier(
            max_iter=15, categorical_features=list(CATEGORICAL), random_state=seed
        ).fit(X, y),
        "forest": RandomForestClassifier(n_estimators=12, max_depth=9, random_state=seed).fit(
            Xc, y
        ),
        "gbr": GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=seed).fit(
            Xc[ok], r[ok]
        ),
    }


MODELS = {seed: _models(seed) for seed in (0,)}


def _scored_factorized(
    kernel: TreeEnsembleKernel, X: np.ndarray, owner: np.ndarray, dims: int, seed: int
) -> Any:
    """Dimension rows keyed 0..k-1; each fact row picks a key, some keys are missing."""
    rng = np.random.default_rng(seed)
    tables = {g: f"dim_{g}" for g in range(1, dims + 1)}
    fz = factorize_ensemble(kernel.ir, owner, tables, origin="test")
    n = X.shape[0]
    blocks = [X[:, owner == FACT]]
    for g in tables:
        dim_rows = X[:, owner == g]  # one dimension row per fact row, keyed by row number
        out = fz.partials[g](dim_rows)
        gone = rng.random(n) < 0.15  # key without a dimension row: the join gives nulls
        for part in out:
            part = part.copy()
            part[gone] = np.nan
            blocks.append(part)
        X[np.ix_(gone, np.flatnonzero(owner == g))] = np.nan  # what materializing would see
    return fz.kernel, np.hstack(blocks), X


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    name=st.sampled_from(["lightgbm", "lightgbm_multi", "histgb", "forest", "gbr"]),
    dims=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_factorized_trees_equal_the_model(name: str, dims: int, seed: int) -> None:
    model = MODELS[0][name]
    kernel = compile_from_object(name, model, strategy="traversal").kernel
    assert isinstance(kernel, TreeEnsembleKernel)
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, dims + 1, N_FEATURES)
    X, _, _ = _data(seed + 1, n=300)
    X[rng.random(X.shape) < 0.02] = 7.0  # unseen categories (and odd numeric values)
    fact_kernel, joined, X_seen = _scored_factorized(kernel, X.copy(), owner, dims, seed)
    got = fact_kernel.score(joined)
    want = kernel.score(X_seen)  # the materialized kernel, itself checked against the model
    rows = np.ones(len(X_seen), dtype=bool)
    if name in ("gbr", "forest"):  # fitted without NaN: compare with the model where complete
        rows = ~np.isnan(X_seen).any(axis=1)
    if want.probability is not None:
        np.testing.assert_allclose(got.probability, want.probability, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(
            got.probability[rows], model.predict_proba(X_seen[rows]), rtol=1e-9, atol=1e-15
        )
        assert list(got.label) == list(want.label)
        assert [str(v) for v in model.predict(X_seen[rows])] == list(got.label[rows])
    else:
        np.testing.assert_allclose(got.prediction, want.prediction, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            got.prediction[rows], model.predict(X_seen[rows]), rtol=1e-9, atol=1e-12
        )


def test_trees_reading_one_dimension_collapse_to_sums() -> None:
    model = MODELS[0]["gbr"]  # depth-3 trees: many read only a couple of features
    kernel = compile_from_object("gbr", model, strategy="traversal").kernel
    assert isinstance(kernel, TreeEnsembleKernel)
    owner = np.array([1, 1, 1, 1, 1, 1, 1, 0])
    reads = [{int(owner[f]) for f in t.feature} for t in kernel.ir.trees]
    assert any(r == {1} for r in reads)
    fz = factorize_ensemble(kernel.ir, owner, {1: "dim"}, origin="test")
    partial = fz.partials[1]
    assert partial.sum_width == 1
    assert partial.whole.n_trees == sum(r == {1} for r in reads)
    X, _, _ = _data(3, n=200)
    X = np.nan_to_num(X)
    joined = np.hstack([X[:, owner == 0], *partial(X[:, owner == 1])])
    np.testing.assert_allclose(
        fz.kernel.score(joined).prediction, model.predict(X), rtol=1e-9, atol=1e-12
    )


# ---------------------------------------------------------------- through Spark


def _by_model(path: Any, model: str) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = pa.table(DeltaTable(str(path)).to_pyarrow_table())
    return table.filter(pc.equal(table["model"], model)).sort_by("id")


@pytest.mark.spark
@pytest.mark.parametrize("seed,missing", [(11, 0.2)])
def test_star_with_trees_factorized_equals_materialized_equals_model(
    spark: Any, tmp_path: Any, seed: int, missing: float
) -> None:
    import batchscore as bs
    from batchscore.jobs.run import run_job
    from tests.star import build_star

    star = build_star(tmp_path, seed=seed, fact_rows=300, a_rows=12, b_rows=9, c_rows=4,
                      missing=missing, nan_rate=0.05, trees=True)  # fmt: skip
    day = "2026-11-21"
    factorized = bs.load_spec(_variant(star, "factorized", "always"), run_date=day)
    text = bs.explain(factorized)
    assert "[factorize_trees] dim_a: factorize" in text
    assert "[factorize_trees] dim_b: factorize" in text
    assert "lgbm[" in text and "forest[" in text
    assert "factorized: fact side compiled: walks the split trees" in text
    run_job(factorized, spark=spark)
    run_job(bs.load_spec(_variant(star, "naive", "never"), run_date=day), spark=spark, rules=())
    rows = star.ids[1::2]
    X = star.X[rows]
    for name in ("lgbm", "forest", "ridge"):
        a = _by_model(tmp_path / "out_factorized", name)
        b = _by_model(tmp_path / "out_naive", name)
        assert a["id"].to_pylist() == rows.tolist() == b["id"].to_pylist()
        assert a["label"].to_pylist() == b["label"].to_pylist()
        got = np.array(a["prediction"].to_pylist(), dtype=float)
        np.testing.assert_allclose(
            got, np.array(b["prediction"].to_pylist(), dtype=float), rtol=1e-9, atol=1e-12
        )
    lgbm = star.models["lgbm"]
    proba = np.array(_by_model(tmp_path / "out_factorized", "lgbm")["probability"].to_pylist())
    np.testing.assert_allclose(proba, lgbm.predict_proba(X), rtol=1e-9, atol=1e-15)
    labels = _by_model(tmp_path / "out_factorized", "lgbm")["label"].to_pylist()
    assert labels == [str(v) for v in lgbm.predict(X)]
    forest = star.models["forest"]
    got = np.array(_by_model(tmp_path / "out_factorized", "forest")["prediction"].to_pylist())
    complete = ~np.isnan(X).any(axis=1)
    np.testing.assert_allclose(got[complete], forest.predict(X[complete]), rtol=1e-9, atol=1e-12)
