"""Pipelines folded at compile time: random front ends, random data with NaN, rtol 1e-9.

`pipeline_kernel` is the converter itself (compile_model's extra parity probe is tested in
test_models.py); every example compares the folded kernel with the pipeline's own
predict / predict_proba on fresh rows.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    QuantileTransformer,
    RobustScaler,
    StandardScaler,
)
from sklearn.svm import LinearSVC

from batchscore.kernels.affine import AffineKernel, TransformedKernel
from batchscore.kernels.base import KernelKind
from batchscore.models import compile_model
from batchscore.models.converters.sklearn_pipeline import pipeline_kernel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

RTOL = 1e-9
SCALERS: dict[str, Any] = {
    "none": None,
    "standard": StandardScaler,
    "minmax": MinMaxScaler,
    "minmax_clip": lambda: MinMaxScaler(clip=True),
    "maxabs": MaxAbsScaler,
    "robust": RobustScaler,
}
IMPUTERS = ["mean", "median", "most_frequent", "constant"]


def make_data(rng: np.random.Generator, n: int, n_num: int, n_cat: int, nan_rate: float) -> Any:
    num = rng.normal(rng.uniform(-5, 5, n_num), rng.uniform(0.5, 3, n_num), (n, n_num))
    num[rng.random(num.shape) < nan_rate] = np.nan
    cat = rng.integers(0, 4, (n, n_cat)).astype(np.float64)
    return np.c_[num, cat]


def score(kernel: Any, model: Any, X: np.ndarray, classifier: bool) -> None:
    proba = kernel.supports_proba
    out = kernel.score(X, proba=proba)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not classifier:
            np.testing.assert_allclose(out.prediction, model.predict(X), rtol=RTOL, atol=1e-12)
            return
        assert out.label is not None
        assert out.label.tolist() == [str(v) for v in model.predict(X)]
        if proba:
            assert out.probability is not None
            np.testing.assert_allclose(
                out.probability, model.predict_proba(X), rtol=RTOL, atol=1e-12
            )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_num=st.integers(1, 3),
    n_cat=st.integers(0, 2),
    nan_rate=st.sampled_from([0.0, 0.1, 0.3]),
    scaler=st.sampled_from(sorted(SCALERS)),
    imputer=st.sampled_from(IMPUTERS),
    indicator=st.booleans(),
    unknown=st.sampled_from(["ignore", "error", "infrequent_if_exist"]),
    drop=st.sampled_from([None, "first", "if_binary"]),
    min_frequency=st.sampled_from([None, 30]),
    final=st.sampled_from(["logistic", "ridge", "svc", "lgbm"]),
    shuffle=st.booleans(),
    remainder=st.sampled_from(["drop", "passthrough"]),
)
def test_random_pipelines_match_sklearn(
    seed: int,
    n_num: int,
    n_cat: int,
    nan_rate: float,
    scaler: str,
    imputer: str,
    indicator: bool,
    unknown: str,
    drop: str | None,
    min_frequency: int | None,
    final: str,
    shuffle: bool,
    remainder: str,
) -> None:
    rng = np.random.default_rng(seed)
    X = make_data(rng, 300, n_num, n_cat, nan_rate)
    filled = np.nan_to_num(X)
    y_reg = filled @ rng.normal(size=X.shape[1]) + rng.normal(size=300)
    y = (y_reg > np.median(y_reg)).astype(int) if final in ("logistic", "svc") else y_reg
    if final == "lgbm":
        y = np.digitize(y_reg, np.quantile(y_reg, [0.33, 0.66]))  # multiclass trees

    num_steps: list[Any] = [SimpleImputer(strategy=imputer, add_indicator=indicator)]
    if SCALERS[scaler] is not None:
        num_steps.append(SCALERS[scaler]())
    num_cols = list(range(n_num))
    cat_cols = list(range(n_num, n_num + n_cat))
    if shuffle:
        num_cols = num_cols[::-1]
    if n_cat and remainder == "passthrough" and nan_rate == 0.0:
        parts = [("num", make_pipeline(*num_steps), num_cols[:-1] or num_cols)]
        parts.append(
            (
                "cat",
                OneHotEncoder(handle_unknown=unknown, drop=drop, min_frequency=min_frequency),
                cat_cols,
            )
        )
    elif n_cat:
        parts = [("num", make_pipeline(*num_steps), num_cols)]
        parts.append(
            (
                "cat",
                OneHotEncoder(handle_unknown=unknown, drop=drop, min_frequency=min_frequency),
                cat_cols,
            )
        )
    else:
        parts = [("num", make_pipeline(*num_steps), num_cols)]
    front = ColumnTransformer(parts, remainder=remainder)
    estimator: Any = {
        "logistic": lambda: LogisticRegression(max_iter=500),
        "ridge": lambda: Ridge(alpha=0.5),
        "svc": lambda: LinearSVC(),
        "lgbm": lambda: lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1, n_jobs=1),
    }[final]()
    model = Pipeline([("front", front), ("model", estimator)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y)
    except ValueError:  # an option combination sklearn refuses (e.g. drop with infrequent)
        assume(False)

    kernel = pipeline_kernel(model, model_name="m", n_features_hint=None)
    if final != "svc":  # labels-only: native once the parity probe accepts no proba
        assert kernel.kind in (KernelKind.AFFINE, KernelKind.TRANSFORMED), kernel.describe()
    assert kernel.n_features == X.shape[1]
    fresh = make_data(rng, 200, n_num, n_cat, nan_rate)
    score(kernel, model, fresh, classifier=final != "ridge")
    if final == "lgbm":
        assert isinstance(kernel, TransformedKernel) and kernel.inner.kind is not KernelKind.OPAQUE


def fit_ct(handle_unknown: str) -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(0)
    X = make_data(rng, 200, 2, 1, 0.1)
    y = (np.nan_to_num(X[:, 0]) + X[:, 2] > 1).astype(int)
    ct = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), [0, 1]),
            ("cat", OneHotEncoder(handle_unknown=handle_unknown), [2]),
        ]
    )
    return make_pipeline(ct, LogisticRegression()).fit(X, y), X


def test_nan_is_imputed_exactly_before_the_matmul() -> None:
    model, X = fit_ct("ignore")
    kernel = compile_model(model, model_name="m")
    assert isinstance(kernel, TransformedKernel), kernel.describe()
    assert isinstance(kernel.inner, AffineKernel)
    np.testing.assert_array_equal(kernel.inner.W[:, 0], model[-1].coef_[0])  # W as fitted
    rows = X[np.isnan(X).any(axis=1)][:5]
    assert len(rows)
    out = kernel.score(rows)
    assert out.probability is not None and not np.isnan(out.probability).any()
    np.testing.assert_allclose(out.probability, model.predict_proba(rows), rtol=RTOL, atol=0)


def test_unknown_category_ignore_contributes_nothing() -> None:
    model, X = fit_ct("ignore")
    kernel = compile_model(model, model_name="m")
    rows = X[:4].copy()
    rows[:, 2] = [7.0, 0.0, -1.0, 2.5]
    out = kernel.score(rows)
    assert out.probability is not None
    np.testing.assert_allclose(out.probability, model.predict_proba(rows), rtol=RTOL, atol=0)


def test_unknown_category_error_gives_a_null_row() -> None:
    model, X = fit_ct("error")
    kernel = pipeline_kernel(model, model_name="m", n_features_hint=None)
    rows = X[:3].copy()
    rows[1, 2] = 9.0
    with pytest.raises(ValueError, match="unknown categor"):
        model.predict(rows)
    out = kernel.score(rows)
    assert out.label is not None and out.probability is not None
    assert (
        out.label[1] is None and np.isnan(out.prediction[1]) and np.isnan(out.probability[1]).all()
    )
    ok = rows[[0, 2]]
    np.testing.assert_allclose(out.probability[[0, 2]], model.predict_proba(ok), rtol=RTOL, atol=0)


def test_affine_front_end_folds_into_one_affine_kernel() -> None:
    rng = np.random.default_rng(3)
    X = make_data(rng, 200, 4, 0, 0.0)
    y = X @ np.arange(1.0, 5.0)
    model = make_pipeline(StandardScaler(), MaxAbsScaler(), LinearRegression()).fit(X, y)
    kernel = compile_model(model, model_name="m")
    assert isinstance(kernel, AffineKernel) and "folded" in kernel.describe()
    np.testing.assert_allclose(kernel.score(X).prediction, model.predict(X), rtol=RTOL)
    ct = ColumnTransformer([("s", RobustScaler(), [3, 1]), ("p", "passthrough", [0, 2])])
    model = make_pipeline(ct, Ridge()).fit(X, y)
    kernel = compile_model(model, model_name="m")
    assert isinstance(kernel, AffineKernel)
    np.testing.assert_allclose(kernel.score(X).prediction, model.predict(X), rtol=RTOL)


def test_dropped_column_keeps_the_stage() -> None:
    """A NaN in a column the ColumnTransformer drops must not null the row."""
    rng = np.random.default_rng(4)
    X = make_data(rng, 100, 3, 0, 0.0)
    model = make_pipeline(ColumnTransformer([("s", StandardScaler(), [0, 1])]), Ridge())
    model.fit(X, X[:, 0])
    kernel = compile_model(model, model_name="m")
    rows = X[:3].copy()
    rows[:, 2] = np.nan
    np.testing.assert_allclose(kernel.score(rows).prediction, model.predict(rows), rtol=RTOL)


def test_string_column_names_map_through_feature_names_in() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    X = make_data(rng, 150, 2, 1, 0.0)
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    ct = ColumnTransformer(
        [("n", StandardScaler(), ["b", "a"]), ("c", OneHotEncoder(handle_unknown="ignore"), ["c"])]
    )
    model = make_pipeline(ct, Ridge()).fit(df, X[:, 0] + X[:, 2])
    kernel = pipeline_kernel(model, model_name="m", n_features_hint=None)
    assert kernel.n_features == 3
    np.testing.assert_allclose(kernel.score(X).prediction, model.predict(df), rtol=RTOL)


def test_unsupported_step_is_opaque_and_named() -> None:
    rng = np.random.default_rng(6)
    X = make_data(rng, 100, 3, 0, 0.0)
    model = make_pipeline(QuantileTransformer(n_quantiles=20), Ridge()).fit(X, X[:, 0])
    kernel = compile_model(model, model_name="m")
    assert kernel.kind is KernelKind.OPAQUE
    assert "QuantileTransformer is not foldable" in kernel.describe()
    np.testing.assert_allclose(kernel.score(X).prediction, model.predict(X), rtol=RTOL)


def test_transformed_kernel_pickles() -> None:
    import pickle

    model, X = fit_ct("ignore")
    kernel = pipeline_kernel(model, model_name="m", n_features_hint=None)
    assert isinstance(kernel, TransformedKernel) and kernel.supports_proba
    again = pickle.loads(pickle.dumps(kernel))
    out = again.score(X, proba=False)
    assert out.label is not None and out.label.tolist() == [str(v) for v in model.predict(X)]
    assert "one-hot" in again.describe() and "fill NaN" in again.describe()
