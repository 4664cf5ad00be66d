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
    BayesianRidge,
    ElasticNet,
    ElasticNetCV,
    HuberRegressor,
    Lasso,
    LassoCV,
    LinearRegression,
    LogisticRegression,
    Ridge,
    RidgeCV,
    SGDClassifier,
    SGDRegressor,
)

from batchscore.errors import ModelError
from batchscore.kernels.affine import AffineKernel, Link
from batchscore.kernels.base import Kernel
from batchscore.models.converters.opaque import to_opaque
from batchscore.models.registry import parity_problem, register


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
)
def linear_regressor(obj: Any, *, model_name: str, n_features_hint: int | None) -> Kernel:
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


@register(LogisticRegression)
def logistic_regression(obj: Any, *, model_name: str, n_features_hint: int | None) -> Kernel:
    return _linear_classifier(
        obj, model_name, binary=("logistic", "binary_softmax"), multi=("softmax", "ovr")
    )


@register(SGDClassifier)
def sgd_classifier(obj: Any, *, model_name: str, n_features_hint: int | None) -> Kernel:
    """Only log-loss SGD has logistic probabilities; other losses are scored as they are."""
    if getattr(obj, "loss", None) != "log_loss":
        return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
    return _linear_classifier(obj, model_name, binary=("logistic",), multi=("ovr",))


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
    return first  # the registry's parity check turns this into an opaque fallback


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
