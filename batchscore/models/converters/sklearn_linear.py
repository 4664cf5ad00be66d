"""scikit-learn linear models -> AffineKernel.

Regressors are `X @ coef_ + intercept_`. Classifiers add a link, and which link depends on the
scikit-learn version: 1.8+ gives a binary LogisticRegression `expit` and a multiclass one
softmax, while older versions let `multi_class` pick OvR or a binary softmax over [-s, s]. Rather
than encode every version's rules, we try the candidate links in order and keep the first that
reproduces the model's own predict_proba on a probe batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import (
    ARDRegression,
    BayesianRidge,
    ElasticNet,
    ElasticNetCV,
    GammaRegressor,
    HuberRegressor,
    Lars,
    LarsCV,
    Lasso,
    LassoCV,
    LassoLars,
    LassoLarsCV,
    LassoLarsIC,
    LinearRegression,
    LogisticRegression,
    OrthogonalMatchingPursuit,
    PassiveAggressiveClassifier,
    PassiveAggressiveRegressor,
    Perceptron,
    PoissonRegressor,
    QuantileRegressor,
    Ridge,
    RidgeClassifier,
    RidgeClassifierCV,
    RidgeCV,
    SGDClassifier,
    SGDRegressor,
    TheilSenRegressor,
    TweedieRegressor,
)
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC, LinearSVR

from batchscore.errors import ModelError
from batchscore.kernels.affine import AffineKernel, Link
from batchscore.kernels.base import Kernel
from batchscore.models.converter_table import DEFAULT_OPTIONS, ConvertOptions, register
from batchscore.models.converters.opaque import to_opaque
from batchscore.models.parity import parity_problem


@register(
    LinearRegression,
    Ridge,
    RidgeCV,
    Lasso,
    LassoCV,
    ElasticNet,
    ElasticNetCV,
    SGDRegressor,
    HuberRegressor,
    BayesianRidge,
    ARDRegression,
    Lars,
    LarsCV,
    LassoLars,
    LassoLarsCV,
    LassoLarsIC,
    OrthogonalMatchingPursuit,
    QuantileRegressor,
    TheilSenRegressor,
    PassiveAggressiveRegressor,
    LinearSVR,
)
def linear_regressor(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """One affine output with the identity link; multi-target models are refused."""
    coef, intercept = _fitted(obj, model_name)
    if coef.ndim == 1:
        return AffineKernel(
            coef.reshape(-1, 1),
            np.reshape(intercept, (1,)),
            "identity",
            vector=True,
            source=type(obj).__name__,
        )
    if coef.shape[0] != 1:
        raise ModelError(
            f"Model '{model_name}' is a {type(obj).__name__} with {coef.shape[0]} targets; "
            "batchscore scores one prediction per model. Fit one model per target."
        )
    return AffineKernel(coef.T, np.reshape(intercept, (1,)), "identity", source=type(obj).__name__)


@register(PoissonRegressor, GammaRegressor, TweedieRegressor)
def glm_regressor(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """`link.inverse(X @ coef_ + intercept_)`: identity or log link (read from the fitted loss)."""
    coef, intercept = _fitted(obj, model_name)
    link_name = type(getattr(getattr(obj, "_base_loss", None), "link", None)).__name__
    links: dict[str, Link] = {"IdentityLink": "identity", "LogLink": "exp"}
    link = links.get(link_name)
    if link is None or coef.ndim != 1:
        return to_opaque(
            obj,
            model_name=model_name,
            n_features_hint=n_features_hint,
            note=f"{type(obj).__name__} with link {link_name} has no native kernel",
        )
    return AffineKernel(
        coef.reshape(-1, 1),
        np.reshape(intercept, (1,)),
        link,
        vector=True,
        source=type(obj).__name__,
    )


@register(LogisticRegression)
def logistic_regression(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    return _linear_classifier(
        obj, model_name, binary=("logistic", "binary_softmax"), multi=("softmax", "ovr")
    )


@register(SGDClassifier)
def sgd_classifier(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """log_loss: logistic / OvR probabilities; modified_huber: its clipped formula; any other
    loss (hinge, perceptron, squared_hinge, ...) has no predict_proba: labels only."""
    loss = getattr(obj, "loss", None)
    if loss == "log_loss":
        return _linear_classifier(obj, model_name, binary=("logistic",), multi=("ovr",))
    if loss == "modified_huber":
        return _linear_classifier(
            obj, model_name, binary=("modified_huber",), multi=("modified_huber",)
        )
    return _linear_classifier(obj, model_name, binary=("decision",), multi=("decision",))


@register(LinearSVC, Perceptron, PassiveAggressiveClassifier, RidgeClassifier, RidgeClassifierCV)
def decision_classifier(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """Linear classifiers without predict_proba: `predict` is the sign or argmax of
    `decision_function`, so the kernel outputs labels only (output: predict)."""
    return _linear_classifier(obj, model_name, binary=("decision",), multi=("decision",))


@register(OneVsRestClassifier)
def one_vs_rest(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """OneVsRestClassifier over binary logistic regressions (probabilities: expit, then
    row-normalised) or over other linear classifiers (labels only). Anything else is opaque."""
    estimators = list(getattr(obj, "estimators_", []) or [])
    classes = tuple(str(c) for c in getattr(obj, "classes_", ()))
    if (
        not estimators
        or getattr(obj, "multilabel_", False)
        or len(classes) < 2
        or len(estimators) != (1 if len(classes) == 2 else len(classes))
    ):
        return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
    kinds = {type(e) for e in estimators}
    proba = kinds == {LogisticRegression}
    label_only = kinds <= {LinearSVC, Perceptron, RidgeClassifier, SGDClassifier}
    if label_only and SGDClassifier in kinds:
        label_only = all(
            getattr(e, "loss", "") not in ("log_loss", "modified_huber") for e in estimators
        )
    if not (proba or label_only):
        return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
    columns, intercepts = [], []
    for e in estimators:
        coef, intercept = _fitted(e, model_name)
        coef = np.atleast_2d(coef)
        if coef.shape[0] != 1 or len(getattr(e, "classes_", ())) != 2:
            return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
        columns.append(coef[0])
        intercepts.append(float(np.reshape(intercept, (-1,))[0]))
    W = np.stack(columns, axis=1)
    b = np.asarray(intercepts)
    source = f"OneVsRestClassifier({type(estimators[0]).__name__})"
    if not proba:
        return AffineKernel(W, b, "decision", classes, source=source)
    return AffineKernel(W, b, "logistic" if len(classes) == 2 else "ovr", classes, source=source)


def _linear_classifier(
    obj: Any, model_name: str, *, binary: tuple[Link, ...], multi: tuple[Link, ...]
) -> Kernel:
    coef, intercept = _fitted(obj, model_name)
    classes = tuple(str(c) for c in obj.classes_)
    coef = np.atleast_2d(coef)
    intercept = np.reshape(intercept, (-1,))
    candidates = binary if len(classes) == 2 else multi
    first: Kernel | None = None
    for link in candidates:
        kernel = AffineKernel(coef.T, intercept, link, classes, source=type(obj).__name__)
        if parity_problem(obj, kernel) is None:
            return kernel
        first = first or kernel
    assert first is not None
    return first  # compile_model's parity check turns this into an opaque fallback


def _fitted(obj: Any, model_name: str) -> tuple[np.ndarray, Any]:
    coef = getattr(obj, "coef_", None)
    if coef is None:
        raise ModelError(
            f"Model '{model_name}' is an unfitted {type(obj).__name__} (no coef_); "
            "fit it before saving."
        )
    if hasattr(coef, "toarray"):  # sparsified coefficients (`.sparsify()`)
        coef = coef.toarray()
    return np.asarray(coef, dtype=np.float64), getattr(obj, "intercept_", 0.0)
