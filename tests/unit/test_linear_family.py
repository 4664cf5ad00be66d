"""Linear family -> one affine kernel, at parity with each model's own predict / predict_proba.

rtol 1e-9, labels identical. Label-only classifiers (LinearSVC, hinge SGD, Perceptron,
RidgeClassifier) have no predict_proba: their kernel gives labels only (`output: predict`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import (
    GammaRegressor,
    LogisticRegression,
    Perceptron,
    PoissonRegressor,
    QuantileRegressor,
    RidgeClassifier,
    SGDClassifier,
    TheilSenRegressor,
    TweedieRegressor,
)
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC, LinearSVR

from batchscore.kernels.affine import AffineKernel
from batchscore.kernels.base import KernelKind
from batchscore.models import compile_from_object, compile_model
from batchscore.models.converters import sklearn_linear

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

RTOL = 1e-9


@functools.cache
def dataset(task: str) -> tuple[np.ndarray, np.ndarray]:
    loader = {"binary": load_breast_cancer, "multiclass": load_wine, "regression": load_diabetes}
    X, y = loader[task](return_X_y=True)
    X = StandardScaler().fit_transform(X)
    if task == "regression":
        y = y / y.mean()  # positive, O(1): fine for Poisson / Gamma / Tweedie
    return X, y


# id -> (task, factory, converter, link of the native kernel)
CASES: dict[str, tuple[str, Callable[[], Any], str, str]] = {
    "LinearSVR": ("regression", lambda: LinearSVR(random_state=0), "linear_regressor", "identity"),
    "Poisson": ("regression", PoissonRegressor, "glm_regressor", "exp"),
    "Gamma": ("regression", GammaRegressor, "glm_regressor", "exp"),
    "Tweedie-1.5": ("regression", lambda: TweedieRegressor(power=1.5), "glm_regressor", "exp"),
    "Tweedie-0": ("regression", lambda: TweedieRegressor(power=0), "glm_regressor", "identity"),
    "Tweedie-log": (
        "regression",
        lambda: TweedieRegressor(power=0, link="log"),
        "glm_regressor",
        "exp",
    ),
    "Quantile": (
        "regression",
        lambda: QuantileRegressor(alpha=0.01),
        "linear_regressor",
        "identity",
    ),
    "TheilSen": (
        "regression",
        lambda: TheilSenRegressor(random_state=0),
        "linear_regressor",
        "identity",
    ),
    "LinearSVC-binary": ("binary", LinearSVC, "decision_classifier", "decision"),
    "LinearSVC-multi": ("multiclass", LinearSVC, "decision_classifier", "decision"),
    "LinearSVC-cs": (
        "multiclass",
        lambda: LinearSVC(multi_class="crammer_singer"),
        "decision_classifier",
        "decision",
    ),
    "SGD-hinge-binary": (
        "binary",
        lambda: SGDClassifier(loss="hinge", random_state=0),
        "sgd_classifier",
        "decision",
    ),
    "SGD-perceptron-multi": (
        "multiclass",
        lambda: SGDClassifier(loss="perceptron", random_state=0),
        "sgd_classifier",
        "decision",
    ),
    "SGD-mhuber-binary": (
        "binary",
        lambda: SGDClassifier(loss="modified_huber", random_state=0),
        "sgd_classifier",
        "modified_huber",
    ),
    "SGD-mhuber-multi": (
        "multiclass",
        lambda: SGDClassifier(loss="modified_huber", random_state=0),
        "sgd_classifier",
        "modified_huber",
    ),
    "Perceptron": ("multiclass", Perceptron, "decision_classifier", "decision"),
    "RidgeClassifier": ("binary", RidgeClassifier, "decision_classifier", "decision"),
    "OvR-logistic-multi": (
        "multiclass",
        lambda: OneVsRestClassifier(LogisticRegression()),
        "one_vs_rest",
        "ovr",
    ),
    "OvR-logistic-binary": (
        "binary",
        lambda: OneVsRestClassifier(LogisticRegression()),
        "one_vs_rest",
        "logistic",
    ),
    "OvR-svc-multi": (
        "multiclass",
        lambda: OneVsRestClassifier(LinearSVC()),
        "one_vs_rest",
        "decision",
    ),
}


@functools.cache
def fitted(case: str) -> Any:
    task, factory, _, _ = CASES[case]
    X, y = dataset(task)
    return factory().fit(X, y)


def check_parity(kernel: Any, model: Any, task: str, X: np.ndarray) -> None:
    out = kernel.score(X, proba=kernel.supports_proba)
    if task == "regression":
        np.testing.assert_allclose(out.prediction, model.predict(X), rtol=RTOL, atol=0)
        assert out.label is None and out.probability is None
        return
    assert out.label is not None
    assert out.label.tolist() == [str(v) for v in model.predict(X)]
    if hasattr(model, "predict_proba") and kernel.supports_proba:
        assert out.probability is not None
        np.testing.assert_allclose(out.probability, model.predict_proba(X), rtol=RTOL, atol=0)
        if task == "binary":
            np.testing.assert_allclose(out.prediction, out.probability[:, 1], rtol=0, atol=0)
    else:
        assert out.probability is None and np.isnan(out.prediction).all()


@pytest.mark.parametrize("case", list(CASES))
def test_native_kernel_is_affine_and_exact(case: str) -> None:
    task, _, converter, link = CASES[case]
    model = fitted(case)
    kernel = getattr(sklearn_linear, converter)(model, model_name="m", n_features_hint=None)
    assert isinstance(kernel, AffineKernel), kernel.describe()
    assert kernel.link == link and kernel.task == task
    X = dataset(task)[0]
    check_parity(kernel, model, task, X)
    check_parity(kernel, model, task, X[:, :] * 3.0 + 1.0)  # off the training distribution


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_model_scores_exactly(case: str) -> None:
    """Through compile_model (native where the parity probe can prove it, else opaque)."""
    task, _, _, link = CASES[case]
    model = fitted(case)
    kernel = compile_model(model, model_name="m")
    if link != "decision":
        assert kernel.kind is KernelKind.AFFINE, kernel.describe()
    check_parity(kernel, model, task, dataset(task)[0])


def test_label_only_classifier_defaults_to_predict() -> None:
    compiled = compile_from_object("svm", fitted("LinearSVC-binary"))
    assert compiled.output == "predict"
    kernel = sklearn_linear.decision_classifier(
        fitted("LinearSVC-binary"), model_name="svm", n_features_hint=None
    )
    assert not kernel.supports_proba
    assert "labels only" in kernel.describe()


def test_exp_link_missing_input_is_null() -> None:
    model = fitted("Poisson")
    kernel = compile_model(model, model_name="m")
    X = dataset("regression")[0][:3].copy()
    X[1, 0] = np.nan
    out = kernel.score(X)
    assert np.isnan(out.prediction[1]) and not np.isnan(out.prediction[[0, 2]]).any()


def test_decision_kernel_missing_input_gives_null_label() -> None:
    model = fitted("LinearSVC-multi")
    kernel = sklearn_linear.decision_classifier(model, model_name="m", n_features_hint=None)
    X = dataset("multiclass")[0][:3].copy()
    X[0, 2] = np.nan
    out = kernel.score(X, proba=False)
    assert out.label is not None and out.label[0] is None and out.label[1] is not None


def test_affine_kernel_constructor_is_backward_compatible() -> None:
    W, b = np.ones((3, 1)), np.zeros(1)
    k = AffineKernel(W, b, "logistic", ("a", "b"), vector=False, source="x")
    assert k.W is not W and np.array_equal(k.W, W) and np.array_equal(k.b, b)
    assert (k.link, k.classes, k.vector, k.source) == ("logistic", ("a", "b"), False, "x")
    assert k.supports_proba and k.task == "binary"
    with pytest.raises(ValueError, match="decision link"):
        AffineKernel(np.ones((3, 2)), np.zeros(2), "decision", ("a", "b"))
