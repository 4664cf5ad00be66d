"""Model loading and compilation: kernels must score exactly like the estimators they replace.

Parity is checked at rtol 1e-9 in float64 with identical labels, on sklearn's bundled data sets
(breast_cancer: binary, wine: multiclass, diabetes: regression), for dense and CSR input.
No Spark: kernels are plain numpy.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import (
    BayesianRidge,
    ElasticNet,
    HuberRegressor,
    Lasso,
    LinearRegression,
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
    RidgeCV,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from batchscore.errors import DataError, ModelError
from batchscore.kernels.affine import AffineKernel
from batchscore.kernels.base import KernelKind
from batchscore.kernels.lightgbm_native import (
    THREADS_ENV,
    LightGBMNativeKernel,
    clear_booster_cache,
    scoring_threads,
)
from batchscore.kernels.trees.lightgbm_text import ModelTextError, _check_numbers
from batchscore.models import (
    CompiledModel,
    ConvertOptions,
    check_feature_count,
    compile_from_object,
    compile_from_spec,
    compile_model,
    load_artifact,
    register,
    supported_types,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

RTOL = 1e-9
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- data


@functools.cache
def dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features (so linear solvers converge fast) and the target."""
    loader = {"binary": load_breast_cancer, "multiclass": load_wine, "regression": load_diabetes}
    X, y = loader[name](return_X_y=True)
    return StandardScaler().fit_transform(X), y


def sparsified(X: np.ndarray) -> sp.csr_matrix:
    """About half the entries set to zero, then stored as CSR (implicit zeros)."""
    mask = np.random.default_rng(1).random(X.shape) < 0.5
    return sp.csr_matrix(np.where(mask, 0.0, X))


def with_nans(X: np.ndarray) -> np.ndarray:
    out = X.copy()
    out[np.random.default_rng(2).random(X.shape) < 0.1] = np.nan
    return out


def inputs(X: np.ndarray, form: str) -> Any:
    if form == "dense":
        return X
    if form == "csr":
        return sparsified(X)
    if form == "dense_nan":
        return with_nans(X)
    assert form == "csr_nan"
    nan_csr = sparsified(with_nans(X))
    assert np.isnan(nan_csr.data).any()
    return nan_csr


# ---------------------------------------------------------------- models


def lgbm(cls: type, **kw: Any) -> Callable[[], Any]:
    return lambda: cls(n_estimators=25, num_leaves=15, verbose=-1, n_jobs=1, **kw)


def fitted_booster(task: str, **params: Any) -> Callable[[], Any]:
    def make() -> Any:
        X, y = dataset(task)
        params.update(verbose=-1, num_threads=1)
        return lgb.train(params, lgb.Dataset(X, y), num_boost_round=20)

    return make


LINEAR = {"kind": KernelKind.AFFINE, "forms": ("dense", "csr")}
TREES = {"kind": KernelKind.TREE_ENSEMBLE, "forms": ("dense", "csr", "dense_nan", "csr_nan")}
"""LightGBM is compiled by default (a C compiler is on every machine that runs the tests)."""

# id -> (task, factory, expectations). Factories return unfitted estimators or fitted Boosters.
CASES: dict[str, tuple[str, Callable[[], Any], dict[str, Any]]] = {
    "LinearRegression": ("regression", LinearRegression, LINEAR),
    "Ridge": ("regression", lambda: Ridge(alpha=2.0), LINEAR),
    "RidgeCV": ("regression", RidgeCV, LINEAR),
    "Lasso": ("regression", lambda: Lasso(alpha=0.5), LINEAR),
    "ElasticNet": ("regression", lambda: ElasticNet(alpha=0.5), LINEAR),
    "SGDRegressor": ("regression", lambda: SGDRegressor(random_state=0), LINEAR),
    "HuberRegressor": ("regression", lambda: HuberRegressor(max_iter=500), LINEAR),
    "BayesianRidge": ("regression", BayesianRidge, LINEAR),
    "LogisticRegression-binary": ("binary", LogisticRegression, LINEAR),
    "LogisticRegression-multinomial": ("multiclass", LogisticRegression, LINEAR),
    "LogisticRegressionCV-binary": (
        "binary",
        lambda: LogisticRegressionCV(Cs=[0.1, 1.0], cv=2),
        LINEAR,
    ),
    "SGDClassifier-log-binary": (
        "binary",
        lambda: SGDClassifier(loss="log_loss", random_state=0),
        LINEAR,
    ),
    "SGDClassifier-log-ovr": (
        "multiclass",
        lambda: SGDClassifier(loss="log_loss", random_state=0),
        LINEAR,
    ),
    "LGBMRegressor-l2": ("regression", lgbm(lgb.LGBMRegressor), TREES),
    "LGBMRegressor-poisson": ("regression", lgbm(lgb.LGBMRegressor, objective="poisson"), TREES),
    "LGBMRegressor-tweedie": ("regression", lgbm(lgb.LGBMRegressor, objective="tweedie"), TREES),
    "LGBMRegressor-quantile": (
        "regression",
        lgbm(lgb.LGBMRegressor, objective="quantile", alpha=0.8),
        TREES,
    ),
    "LGBMClassifier-binary": ("binary", lgbm(lgb.LGBMClassifier), TREES),
    "LGBMClassifier-multiclass": ("multiclass", lgbm(lgb.LGBMClassifier), TREES),
    "LGBMClassifier-multiclassova": (
        "multiclass",
        lgbm(lgb.LGBMClassifier, objective="multiclassova"),
        TREES,
    ),
    "Booster-binary": ("binary", fitted_booster("binary", objective="binary"), TREES),
    "Booster-multiclass": (
        "multiclass",
        fitted_booster("multiclass", objective="multiclass", num_class=3),
        TREES,
    ),
    "Booster-gamma": ("regression", fitted_booster("regression", objective="gamma"), TREES),
    "Pipeline-folded": (
        "binary",
        lambda: make_pipeline(StandardScaler(), LogisticRegression()),
        {"kind": KernelKind.AFFINE, "forms": ("dense", "csr")},
    ),
}

PARITY_PARAMS = [
    pytest.param(case, form, id=f"{case}-{form}")
    for case, (_, _, exp) in CASES.items()
    for form in exp["forms"]
]


@functools.cache
def fitted(case: str) -> Any:
    task, factory, _ = CASES[case]
    model = factory()
    if isinstance(model, lgb.Booster):
        return model
    X, y = dataset(task)
    if "Pipeline" in case:  # scale inside the pipeline: feed it the raw data
        X = load_breast_cancer().data
    return model.fit(X, y)


def reference(model: Any, X: Any, task: str) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """What the estimator itself says: (prediction column, probability, labels)."""
    if isinstance(model, lgb.Booster):
        raw = np.asarray(model.predict(X), dtype=np.float64)
        if task == "regression":
            return raw, None, None
        proba = np.vstack((1.0 - raw, raw)).T if raw.ndim == 1 else raw
        labels = np.argmax(proba, axis=1).astype(str).astype(object)
    elif task == "regression":
        return np.asarray(model.predict(X)).reshape(-1), None, None
    else:
        proba = np.asarray(model.predict_proba(X))
        labels = np.asarray([str(v) for v in model.predict(X)], dtype=object)
    prediction = proba[:, 1] if task == "binary" else np.full(proba.shape[0], np.nan)
    return prediction, proba, labels


@pytest.mark.parametrize(("case", "form"), PARITY_PARAMS)
def test_kernel_matches_estimator(case: str, form: str) -> None:
    task, _, exp = CASES[case]
    model = fitted(case)
    kernel = compile_model(model, model_name="m")
    assert kernel.kind is exp["kind"], kernel.describe()
    assert kernel.task == task
    X = load_breast_cancer().data if "Pipeline" in case else dataset(task)[0]
    X = inputs(X, form)
    # The pipeline's scaler refuses CSR; the opaque kernel densifies, so compare with dense.
    X_ref = X.toarray() if "Pipeline" in case and sp.issparse(X) else X
    want_pred, want_proba, want_labels = reference(model, X_ref, task)

    got = kernel.score(X, proba=True)
    np.testing.assert_allclose(got.prediction, want_pred, rtol=RTOL, atol=0)
    if task == "regression":
        assert got.label is None and got.probability is None
        return
    assert got.probability is not None and want_proba is not None
    np.testing.assert_allclose(got.probability, want_proba, rtol=RTOL, atol=0)
    assert got.label is not None
    assert got.label.tolist() == want_labels.tolist()

    labels_only = kernel.score(X, proba=False)
    assert labels_only.probability is None
    assert np.isnan(labels_only.prediction).all()
    assert labels_only.label is not None
    assert labels_only.label.tolist() == want_labels.tolist()


@pytest.mark.parametrize(
    "classes",
    [
        pytest.param(["benign", "malignant"], id="str-binary"),
        pytest.param([3, 7], id="int-binary"),
        pytest.param([False, True], id="bool-binary"),
        pytest.param([1.0, 2.0, 3.0], id="float-multiclass"),
        pytest.param(["a", "b", "c"], id="str-multiclass"),
    ],
)
@pytest.mark.parametrize(
    "factory",
    [
        pytest.param(LogisticRegression, id="logistic"),
        pytest.param(lgbm(lgb.LGBMClassifier), id="lgbm"),
    ],
)
def test_labels_are_str_of_predict(classes: list[Any], factory: Callable[[], Any]) -> None:
    X, y = dataset("binary" if len(classes) == 2 else "multiclass")
    y_mapped = np.asarray(classes, dtype=object if isinstance(classes[0], str) else None)[y]
    model = factory().fit(X, y_mapped)
    kernel = compile_model(model, model_name="m")
    assert kernel.classes == tuple(str(c) for c in model.classes_)
    got = kernel.score(X)
    assert got.label is not None
    assert got.label.tolist() == [str(v) for v in model.predict(X)]


# ---------------------------------------------------------------- kernel behaviour


def test_affine_is_bitwise_for_logistic_and_linear() -> None:
    for case in ("LinearRegression", "LogisticRegression-binary", "LogisticRegression-multinomial"):
        task = CASES[case][0]
        model = fitted(case)
        X = dataset(task)[0]
        got = compile_model(model, model_name="m").score(X)
        if task == "regression":
            assert np.array_equal(got.prediction, model.predict(X))
        else:
            assert np.array_equal(got.probability, model.predict_proba(X))


def test_affine_missing_input_gives_null_outputs() -> None:
    X = dataset("multiclass")[0].copy()
    X[3, 0] = np.nan
    got = compile_model(fitted("LogisticRegression-multinomial"), model_name="m").score(X)
    assert got.label is not None and got.probability is not None
    assert got.label[3] is None and np.isnan(got.probability[3]).all()
    assert got.label[2] is not None and np.isfinite(got.probability[2]).all()


def test_wide_input_is_refused_with_the_counts() -> None:
    kernel = compile_model(fitted("LGBMClassifier-binary"), model_name="m")
    with pytest.raises(DataError, match="expects 30 input columns but the batch has 29"):
        kernel.score(dataset("binary")[0][:, :29])


@pytest.mark.parametrize("case", ["LogisticRegression-binary", "LGBMClassifier-multiclass"])
def test_empty_batch(case: str) -> None:
    task = CASES[case][0]
    kernel = compile_model(fitted(case), model_name="m")
    got = kernel.score(np.zeros((0, dataset(task)[0].shape[1])))
    assert got.prediction.shape == (0,)
    assert got.probability is not None and got.probability.shape[0] == 0


def test_lightgbm_kernel_pickles_without_the_booster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSCORE_CC", "none")  # no compiler: LightGBM's own predictor
    kernel = compile_model(fitted("LGBMClassifier-binary"), model_name="m")
    assert isinstance(kernel, LightGBMNativeKernel)
    blob = pickle.dumps(kernel)
    assert len(blob) < len(kernel.model_str) + 4096
    clear_booster_cache()
    clone = pickle.loads(blob)
    X = dataset("binary")[0]
    assert np.array_equal(clone.score(X).prediction, kernel.score(X).prediction)
    assert clone.booster is kernel.booster  # one Booster per process, keyed by the model


def test_thread_count_comes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert scoring_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "4")
    assert scoring_threads() == 4


def test_affine_kernel_pickles() -> None:
    kernel = compile_model(fitted("LogisticRegression-multinomial"), model_name="m")
    assert isinstance(kernel, AffineKernel)
    assert kernel.W.shape == (13, 3)
    X = dataset("multiclass")[0]
    clone = pickle.loads(pickle.dumps(kernel))
    assert np.array_equal(clone.score(X).probability, kernel.score(X).probability)


def test_early_stopped_lightgbm_uses_the_best_iteration() -> None:
    X, y = dataset("binary")
    model = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.3, verbose=-1, n_jobs=1)
    model.fit(
        X[:400],
        y[:400],
        eval_set=[(X[400:], y[400:])],
        callbacks=[lgb.early_stopping(3, verbose=False)],
    )
    assert 0 < model.best_iteration_ < 300
    got = compile_model(model, model_name="m").score(X)
    np.testing.assert_allclose(got.probability, model.predict_proba(X), rtol=RTOL, atol=0)


def test_binary_softmax_link_matches_sklearn_formula() -> None:
    """The link older scikit-learn used for a binary multinomial LogisticRegression."""
    from sklearn.utils.extmath import softmax

    rng = np.random.default_rng(3)
    W, b, X = rng.normal(size=(4, 1)), rng.normal(size=1), rng.normal(size=(50, 4))
    kernel = AffineKernel(W, b, "binary_softmax", ("a", "b"))
    s = X @ W[:, 0] + b[0]
    np.testing.assert_array_equal(kernel.score(X).probability, softmax(np.c_[-s, s]))
    assert kernel.score(X).label.tolist() == np.where(s > 0, "b", "a").tolist()


# ---------------------------------------------------------------- registry


class NoPredict:
    pass


class CustomRegressor:
    n_features_in_ = 3

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(X.sum(axis=1)).reshape(-1)


class DenseOnly(CustomRegressor):
    def predict(self, X: Any) -> np.ndarray:
        if sp.issparse(X):
            raise TypeError("sparse input is not supported")
        return super().predict(X)


class TweakedLogistic(LogisticRegression):
    def predict_proba(self, X: Any) -> Any:
        return super().predict_proba(X) ** 1.0


class Miscompiled(LinearRegression):
    """Registered below with a converter that gets the intercept wrong."""


@register(Miscompiled)
def _wrong(
    obj: Any, *, model_name: str, n_features_hint: int | None, options: ConvertOptions
) -> AffineKernel:
    W = obj.coef_.reshape(-1, 1)
    return AffineKernel(W, np.array([obj.intercept_ + 1.0]), "identity", vector=True)


def test_unknown_object_is_refused_listing_supported() -> None:
    with pytest.raises(ModelError, match=r"Model 'm' is a .*NoPredict.*LogisticRegression"):
        compile_model(NoPredict(), model_name="m")
    assert "LGBMClassifier" in supported_types()


def test_object_with_predict_is_opaque() -> None:
    kernel = compile_model(CustomRegressor(), model_name="m")
    assert kernel.kind is KernelKind.OPAQUE and kernel.describe() == "opaque (CustomRegressor)"
    X = np.arange(6.0).reshape(2, 3)
    assert kernel.score(X).prediction.tolist() == [3.0, 12.0]


class Undeclared:
    def predict(self, X: Any) -> np.ndarray:
        return np.zeros(X.shape[0])


def test_opaque_input_count_comes_from_the_hint_when_undeclared() -> None:
    assert compile_model(Undeclared(), model_name="m", n_features_hint=7).n_features == 7
    unknown = compile_from_object("m", Undeclared())
    check_feature_count(unknown, 12, "[a, b]")  # cannot know: the planner's count stands


def test_opaque_densifies_when_sparse_is_refused() -> None:
    kernel = compile_model(DenseOnly(), model_name="m")
    X = sp.csr_matrix(np.arange(6.0).reshape(2, 3))
    assert kernel.score(X).prediction.tolist() == [3.0, 12.0]


def test_subclass_overriding_scoring_is_opaque() -> None:
    X, y = dataset("binary")
    assert compile_model(TweakedLogistic().fit(X, y), model_name="m").kind is KernelKind.OPAQUE


def test_converter_that_disagrees_falls_back_to_opaque() -> None:
    X, y = dataset("regression")
    model = Miscompiled().fit(X, y)
    kernel = compile_model(model, model_name="m")
    assert kernel.kind is KernelKind.OPAQUE and "disagreed" in kernel.describe()
    np.testing.assert_array_equal(kernel.score(X).prediction, model.predict(X))


def test_multi_target_regressor_is_refused() -> None:
    X, y = dataset("regression")
    model = Ridge().fit(X, np.c_[y, y])
    with pytest.raises(ModelError, match=r"2 targets.*one model per target"):
        compile_model(model, model_name="m")


def test_unfitted_estimator_is_refused() -> None:
    with pytest.raises(ModelError, match="unfitted LogisticRegression"):
        compile_model(LogisticRegression(), model_name="m")
    with pytest.raises(ModelError, match="unfitted LGBMClassifier"):
        compile_model(lgb.LGBMClassifier(), model_name="m")


def test_lightgbm_custom_objective_classifier_is_refused() -> None:
    def logloss(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prob = 1 / (1 + np.exp(-p))
        return prob - y, prob * (1 - prob)

    X, y = dataset("binary")
    model = lgb.LGBMClassifier(n_estimators=3, objective=logloss, verbose=-1, n_jobs=1).fit(X, y)
    with pytest.raises(ModelError, match="raw scores"):
        compile_model(model, model_name="m")
    with pytest.raises(ModelError, match="objective 'custom'"):
        compile_model(model.booster_, model_name="m")


# ---------------------------------------------------------------- artifacts


def dump(path: Path, obj: Any, **kw: Any) -> str:
    joblib.dump(obj, path, **kw)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unpinned_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    digest = dump(path, fitted("Ridge"))
    with pytest.raises(ModelError, match=f"no sha256 pin.*Add sha256: {digest}") as err:
        load_artifact(str(path), sha256=None, model_name="m")
    assert "\n" not in str(err.value)


def test_sha_mismatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    digest = dump(path, fitted("Ridge"))
    with pytest.raises(ModelError, match=f"sha256 {digest} but the spec pins {'0' * 64}"):
        load_artifact(str(path), sha256="0" * 64, model_name="m")
    with pytest.raises(ModelError, match="not 64 hex digits"):
        load_artifact(str(path), sha256="abc", model_name="m")


@pytest.mark.parametrize(
    "writer",
    [
        pytest.param(lambda p, o: dump(p, o), id="joblib"),
        pytest.param(lambda p, o: dump(p, o, compress=3), id="joblib-compressed"),
        pytest.param(lambda p, o: p.write_bytes(pickle.dumps(o)), id="plain-pickle"),
    ],
)
def test_pinned_pickle_loads(tmp_path: Path, writer: Callable[[Path, Any], Any]) -> None:
    path = tmp_path / "m.pkl"
    writer(path, fitted("Ridge"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    art = load_artifact(str(path), sha256=digest.upper(), model_name="m")
    assert art.format == "pickle" and art.sha256 == digest
    assert isinstance(art.obj, Ridge)
    assert load_artifact(f"file://{path}", sha256=digest, model_name="m").sha256 == digest


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
        pytest.param(lambda good: b"\x00garbage" * 100, id="garbage"),
        pytest.param(lambda good: b"", id="empty"),
    ],
)
def test_corrupt_file_is_refused(tmp_path: Path, content: Callable[[bytes], bytes]) -> None:
    good = pickle.dumps(fitted("Ridge"))
    path = tmp_path / "m.pkl"
    path.write_bytes(content(good))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelError, match=r"Model 'm' \(.*\) cannot be loaded: ") as err:
        load_artifact(str(path), sha256=digest, model_name="m")
    assert "\n" not in str(err.value)


def test_missing_file_and_unknown_scheme_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_artifact(str(tmp_path / "nope.pkl"), sha256=None, model_name="m")
    # object stores are read (tests/spark/test_s3.py); a scheme no filesystem knows is not
    with pytest.raises(ModelError, match=r"\(nope://bucket/m.pkl\) cannot be read: "):
        load_artifact("nope://bucket/m.pkl", sha256=None, model_name="m")


def test_lightgbm_text_loads_unpinned(tmp_path: Path) -> None:
    path = tmp_path / "model.txt"
    fitted("LGBMClassifier-multiclass").booster_.save_model(str(path))
    art = load_artifact(str(path), sha256=None, model_name="m")
    assert art.format == "lightgbm_text" and isinstance(art.obj, lgb.Booster)
    with pytest.raises(ModelError, match="but the spec pins"):
        load_artifact(str(path), sha256="1" * 64, model_name="m")
    kernel = compile_model(art.obj, model_name="m")
    assert kernel.classes == ("0", "1", "2")
    X = dataset("multiclass")[0]
    np.testing.assert_allclose(
        kernel.score(X).probability,
        fitted("LGBMClassifier-multiclass").predict_proba(X),
        rtol=RTOL,
        atol=0,
    )


def test_truncated_lightgbm_text_is_refused(tmp_path: Path) -> None:
    text = fitted("LGBMClassifier-binary").booster_.model_to_string()
    path = tmp_path / "model.txt"
    path.write_text(text[: len(text) // 3])
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_artifact(str(path), sha256=None, model_name="m")


def _text_model(kind: str) -> Any:
    X, y = dataset("regression")
    params: dict[str, Any] = {"verbose": -1, "num_threads": 1}
    if kind == "categorical":
        X = X.copy()
        X[:, 1] = (X[:, 1] > 0).astype(float) + 2 * (X[:, 2] > 0)
        data = lgb.Dataset(X, y, categorical_feature=[1], params={"min_data_per_group": 5})
        params["cat_smooth"] = 1.0
    elif kind == "linear_tree":
        data = lgb.Dataset(X, y, params={"linear_tree": True})
    elif kind == "single_leaf":
        data = lgb.Dataset(X, np.ones_like(y))
    else:
        X, y = dataset("multiclass")
        data = lgb.Dataset(X, y)
        params.update(objective="multiclass", num_class=3)
    return lgb.train(params, data, num_boost_round=5), X


@pytest.mark.parametrize("kind", ["categorical", "linear_tree", "single_leaf", "multiclass"])
def test_valid_lightgbm_text_models_load(tmp_path: Path, kind: str) -> None:
    booster, X = _text_model(kind)
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    art = load_artifact(str(path), sha256=None, model_name="m")
    got = compile_model(art.obj, model_name="m").score(X)
    want = booster.predict(X)
    if want.ndim == 2:
        np.testing.assert_allclose(got.probability, want, rtol=RTOL, atol=0)
    else:
        np.testing.assert_allclose(got.prediction, want, rtol=RTOL, atol=0)


FUZZ = """
import sys, numpy as np, lightgbm as lgb
from sklearn.datasets import load_breast_cancer
from batchscore.errors import ModelError
from batchscore.models import load_artifact
X, y = load_breast_cancer(return_X_y=True)
text = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                 lgb.Dataset(X, y), num_boost_round=4).model_to_string().encode()
rng = np.random.default_rng(7)
path = sys.argv[1]
for i in range(300):
    t = bytearray(text)
    at = int(rng.integers(0, len(t)))
    if i < 60:
        t = t[:at]
    elif i % 3 == 0:
        t[at] = int(rng.integers(32, 127))
    elif i % 3 == 1:
        del t[at]
    else:
        t.insert(at, int(rng.integers(32, 127)))
    open(path, "wb").write(bytes(t))
    try:
        load_artifact(path, sha256=None, model_name="m")
    except ModelError as exc:
        assert "\\n" not in str(exc)
print("survived")
"""


def test_damaged_numeric_line_is_refused_fast(tmp_path: Path) -> None:
    """A bad token at the end of a long line must not send the checker's regex backtracking."""
    text = fitted("LGBMClassifier-binary").booster_.model_to_string()
    at = text.index("\nis_linear=")
    path = tmp_path / "model.txt"
    path.write_text(text[: at - 1] + "x" + text[at:])  # same length: passes the size checks
    started = time.perf_counter()
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_artifact(str(path), sha256=None, model_name="m")
    long_line = " ".join(["1234567"] * 400) + "x"  # backtracking would try 7**400 splits
    with pytest.raises(ModelTextError, match="non-number"):
        _check_numbers(long_line, "leaf_count")
    assert time.perf_counter() - started < 2.0


def test_damaged_lightgbm_text_never_crashes_the_process(tmp_path: Path) -> None:
    """LightGBM's loader aborts or segfaults on some damaged files; ours must refuse them."""
    result = subprocess.run(
        [sys.executable, "-c", FUZZ, str(tmp_path / "m.txt")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "survived" in result.stdout


# ---------------------------------------------------------------- compiled models


def saved(tmp_path: Path, case: str) -> tuple[str, str]:
    path = tmp_path / f"{case}.joblib"
    return str(path), dump(path, fitted(case))


def test_compile_from_spec_defaults(tmp_path: Path) -> None:
    path, digest = saved(tmp_path, "LogisticRegression-binary")
    clf = compile_from_spec("clf", path, digest, None, None)
    assert clf.output == "predict_proba" and clf.version == digest[:12] and clf.sha256 == digest
    path, digest = saved(tmp_path, "Ridge")
    reg = compile_from_spec("reg", path, digest, None, "2024-06")
    assert reg.output == "predict" and reg.version == "2024-06"


def test_predict_proba_on_regressor_is_refused(tmp_path: Path) -> None:
    path, digest = saved(tmp_path, "Ridge")
    with pytest.raises(ModelError, match=r"Model 'reg' is a regressor.*set output: predict"):
        compile_from_spec("reg", path, digest, "predict_proba", None)


def test_classifier_without_proba_defaults_to_predict() -> None:
    X, y = dataset("binary")
    model = compile_from_object("svm", LinearSVC().fit(X, y))
    assert model.output == "predict" and model.kernel.kind is KernelKind.AFFINE
    out = model.score(X)
    assert out.probability is None and np.isnan(out.prediction).all()
    with pytest.raises(ModelError, match="has no predict_proba; set output: predict"):
        compile_from_object("svm", LinearSVC().fit(X, y), output="predict_proba")


def test_compile_from_object_versions_by_content() -> None:
    a = compile_from_object("a", fitted("Ridge"))
    b = compile_from_object("b", fitted("Lasso"))
    assert isinstance(a, CompiledModel) and len(a.sha256) == 64 and a.version == a.sha256[:12]
    assert a.sha256 != b.sha256


def test_check_feature_count() -> None:
    model = compile_from_object("churn", fitted("LGBMClassifier-binary"))
    check_feature_count(model, 30, ["age", "plan_vec"])
    with pytest.raises(
        ModelError,
        match=r"Model 'churn' expects 30 inputs but its features \[age, plan_vec\] give 28",
    ):
        check_feature_count(model, 28, ["age", "plan_vec"])


def test_models_package_does_not_import_pyspark() -> None:
    code = (
        "import sys, batchscore.models, batchscore.kernels.affine, "
        "batchscore.kernels.lightgbm_native, batchscore.kernels.opaque; "
        "import batchscore.models.converters; "
        "assert 'pyspark' not in sys.modules, 'pyspark imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_opaque_model_that_refuses_nan_scores_those_rows_null() -> None:
    """A model whose own predict refuses NaN/inf (most of scikit-learn) gets the other rows
    scored as it would score them, and null for those rows, like the native kernels."""
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=5, random_state=0).fit(X, y)
    kernel = compile_model(model, model_name="g", opaque=True)
    bad = X.copy()
    bad[3, 1], bad[5, 2], bad[7, 0] = np.nan, np.inf, -np.inf
    out = kernel.score(bad)
    ok = np.isfinite(bad).all(axis=1)
    np.testing.assert_array_equal(out.probability[ok], model.predict_proba(X[ok]))
    assert np.isnan(out.probability[~ok]).all() and np.isnan(out.prediction[~ok]).all()
    assert list(out.label[~ok]) == [None] * 3
    assert list(out.label[ok]) == [str(v) for v in model.predict(X[ok])]
    with pytest.raises(DataError):  # every row refused: still the model's own error
        kernel.score(np.full((4, 4), np.nan))
