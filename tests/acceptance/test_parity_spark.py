"""Parity matrix through Spark: every model kind x real datasets, scored by `bs.score`.

Each dataset becomes one DataFrame (features as one array column, NaNs sprinkled in for the
models that accept them) and ONE `bs.score` call scores every model, so the matrix costs one
Spark job per dataset. prediction/probability within rtol 1e-9 of the model's own output,
labels identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from sklearn import datasets, ensemble, linear_model, pipeline, preprocessing, svm, tree

import batchscore as bs
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.spark, pytest.mark.usefixtures("shared_data")]

Factory = Callable[[], Any]
NAN_OK = {"hgb", "lgbm", "lgbm_booster", "tree", "forest", "extra", "forest_bitvector", "forest_perfect",
          "forest_traversal", "forest_gemm"}  # fmt: skip


def _trees(kind: str) -> dict[str, tuple[Factory, str | None]]:
    clf = kind != "regression"
    return {
        "tree": (lambda: (tree.DecisionTreeClassifier if clf else tree.DecisionTreeRegressor)(max_depth=6, random_state=0), None),
        "forest": (lambda: (ensemble.RandomForestClassifier if clf else ensemble.RandomForestRegressor)(n_estimators=15, max_depth=6, random_state=0), None),
        "forest_bitvector": (lambda: (ensemble.RandomForestClassifier if clf else ensemble.RandomForestRegressor)(n_estimators=10, max_depth=5, random_state=1), "bitvector"),
        "forest_perfect": (lambda: (ensemble.RandomForestClassifier if clf else ensemble.RandomForestRegressor)(n_estimators=10, max_depth=5, random_state=2), "perfect"),
        "forest_gemm": (lambda: (ensemble.RandomForestClassifier if clf else ensemble.RandomForestRegressor)(n_estimators=10, max_depth=3, random_state=3), "gemm"),
        "forest_traversal": (lambda: (ensemble.RandomForestClassifier if clf else ensemble.RandomForestRegressor)(n_estimators=10, max_depth=8, random_state=4), "traversal"),
        "extra": (lambda: (ensemble.ExtraTreesClassifier if clf else ensemble.ExtraTreesRegressor)(n_estimators=10, max_depth=6, random_state=0), None),
        "gbm": (lambda: (ensemble.GradientBoostingClassifier if clf else ensemble.GradientBoostingRegressor)(n_estimators=20, max_depth=3, random_state=0), None),
        "hgb": (lambda: (ensemble.HistGradientBoostingClassifier if clf else ensemble.HistGradientBoostingRegressor)(max_iter=20, random_state=0), None),
        "lgbm": (lambda: (lgb.LGBMClassifier if clf else lgb.LGBMRegressor)(n_estimators=20, verbose=-1, random_state=0), None),
    }  # fmt: skip


def _linear(kind: str) -> dict[str, tuple[Factory, str | None]]:
    if kind == "regression":
        return {
            "ols": (linear_model.LinearRegression, None),
            "ridge": (lambda: linear_model.Ridge(alpha=0.3), None),
            "lasso": (lambda: linear_model.Lasso(alpha=0.1), None),
            "enet": (lambda: linear_model.ElasticNet(alpha=0.1), None),
            "sgd": (lambda: linear_model.SGDRegressor(random_state=0), None),
            "linsvr": (lambda: svm.LinearSVR(random_state=0, max_iter=5000), None),
            "poisson": (lambda: linear_model.PoissonRegressor(max_iter=300), None),
            "gamma": (lambda: linear_model.GammaRegressor(max_iter=300), None),
            "tweedie": (lambda: linear_model.TweedieRegressor(power=1.5, max_iter=300), None),
            "scaled_ridge": (lambda: pipeline.make_pipeline(preprocessing.StandardScaler(), linear_model.Ridge()), None),
        }  # fmt: skip
    return {
        "logreg": (lambda: linear_model.LogisticRegression(max_iter=5000), None),
        "sgd_log": (lambda: linear_model.SGDClassifier(loss="log_loss", random_state=0), None),
        "linsvc": (lambda: svm.LinearSVC(random_state=0, max_iter=5000), None),
        "scaled_logreg": (lambda: pipeline.make_pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression(max_iter=5000)), None),
        "minmax_logreg": (lambda: pipeline.make_pipeline(preprocessing.MinMaxScaler(), linear_model.LogisticRegression(max_iter=5000)), None),
    }  # fmt: skip


def _flights(n: int = 1_500, width: int = 60) -> tuple[np.ndarray, np.ndarray]:
    from batchscore.datasets.morpheus import materialize_flights

    X, y = materialize_flights(SHARED_DATA)
    rows = np.random.default_rng(0).choice(X.shape[0], n, replace=False)
    sample = X[rows]
    dense_columns = np.argsort(-np.asarray(sample.sum(axis=0)).ravel())[:width]
    return sample[:, dense_columns].toarray(), y[rows]


DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, str]]] = {
    "breast_cancer": lambda: (*datasets.load_breast_cancer(return_X_y=True), "binary"),
    "wine": lambda: (*datasets.load_wine(return_X_y=True), "multiclass"),
    "diabetes": lambda: (*datasets.load_diabetes(return_X_y=True), "regression"),
    "flights": lambda: (*_flights(), "binary"),
}


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_model_kind_through_spark(spark: Any, dataset: str) -> None:
    if dataset == "flights" and not (SHARED_DATA / "Flights").exists():
        pytest.skip("no Morpheus data beside the repo (docs/datasets.md)")
    X, y, kind = DATASETS[dataset]()
    X = np.asarray(X, dtype=np.float64)
    if kind == "regression":
        y = y - y.min() + 1.0  # positive targets for the Poisson/Gamma/Tweedie links
    rng = np.random.default_rng(0)
    X_nan = X.copy()
    X_nan[rng.random(X.shape) < 0.03] = np.nan
    entries, fitted = [], {}
    for name, (factory, strategy) in {**_linear(kind), **_trees(kind)}.items():
        model = factory().fit(X, y)
        fitted[name] = model
        column = "x_nan" if name in NAN_OK else "x"
        entry = {"name": name, "model": model, "features": [column]}
        if strategy:
            entry["strategy"] = strategy
        entries.append(entry)
    booster = lgb.train({"objective": "regression" if kind == "regression" else ("binary" if kind == "binary" else "multiclass"),
                         "num_class": len(np.unique(y)) if kind == "multiclass" else 1, "verbose": -1},
                        lgb.Dataset(X, y if kind != "multiclass" else np.unique(y, return_inverse=True)[1]), 15)  # fmt: skip
    fitted["lgbm_booster"] = booster
    entries.append({"name": "lgbm_booster", "model": booster, "features": ["x_nan"]})
    rows = [(i, X[i].tolist(), X_nan[i].tolist()) for i in range(len(X))]
    df = spark.createDataFrame(rows, "row long, x array<double>, x_nan array<double>")
    scored = bs.score(df, models=entries, id_columns=["row"]).toPandas()
    assert set(scored["model"]) == set(fitted)
    for name, model in fitted.items():
        got = scored[scored["model"] == name].sort_values("row")
        inputs = X_nan if name in NAN_OK else X
        _check(name, model, inputs, got, kind)


def _check(name: str, model: Any, X: np.ndarray, got: Any, kind: str) -> None:
    if isinstance(model, lgb.Booster):
        raw = model.predict(X)
        if kind == "regression" or kind == "binary":
            np.testing.assert_allclose(
                got["prediction"].to_numpy(float), raw, rtol=1e-9, err_msg=name
            )
        else:
            np.testing.assert_allclose(
                np.stack(got["probability"].to_numpy()), raw, rtol=1e-9, err_msg=name
            )
        return
    if kind == "regression":
        np.testing.assert_allclose(
            got["prediction"].to_numpy(float), model.predict(X), rtol=1e-9, err_msg=name
        )
        return
    assert list(got["label"]) == [str(c) for c in model.predict(X)], name
    if hasattr(model, "predict_proba"):
        proba = np.stack(got["probability"].to_numpy())
        np.testing.assert_allclose(
            proba, model.predict_proba(X), rtol=1e-9, atol=1e-15, err_msg=name
        )
