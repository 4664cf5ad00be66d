"""Wrap any object with predict() as an opaque kernel, working out what its output means."""

from __future__ import annotations

from typing import Any

import numpy as np

from batchscore.errors import ModelError
from batchscore.kernels.base import Task
from batchscore.kernels.opaque import UNKNOWN_N_FEATURES, OpaqueKernel


def to_opaque(
    obj: Any, *, model_name: str, n_features_hint: int | None, note: str = ""
) -> OpaqueKernel:
    """A classifier is anything with `classes_`; everything else scores as a regressor."""
    if not callable(getattr(obj, "predict", None)):
        raise ModelError(
            f"Model '{model_name}' is a {type(obj).__name__} without a predict() method; "
            "save the fitted estimator itself, not a wrapper or a dict."
        )
    _check_fitted(obj, model_name)
    classes = _classes(obj, model_name)
    task: Task = "regression"
    if classes is not None:
        task = "binary" if len(classes) == 2 else "multiclass"
    declared = getattr(obj, "n_features_in_", None)
    if isinstance(declared, int):
        n_features = declared
    else:
        n_features = n_features_hint if n_features_hint is not None else UNKNOWN_N_FEATURES
    return OpaqueKernel(
        obj, task=task, classes=classes, n_features=n_features, model_name=model_name, note=note
    )


def _classes(obj: Any, model_name: str) -> tuple[str, ...] | None:
    try:
        raw = obj.classes_
    except AttributeError:  # a pipeline ending in a regressor raises here
        return None
    if raw is None:
        return None
    values = list(raw)
    if any(np.ndim(c) > 0 for c in values) or len(values) < 2:
        raise ModelError(
            f"Model '{model_name}' is a {type(obj).__name__} with classes_ {_short(raw)}; "
            "batchscore scores single-output classifiers with at least two classes. "
            "Fit one model per target."
        )
    return tuple(str(c) for c in values)


def _short(raw: Any) -> str:
    text = " ".join(str(raw).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _check_fitted(obj: Any, model_name: str) -> None:
    try:
        from sklearn.base import BaseEstimator
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted
    except ImportError:  # pragma: no cover - sklearn is a dependency
        return
    if not isinstance(obj, BaseEstimator):
        return
    try:
        check_is_fitted(obj)
    except NotFittedError:
        raise ModelError(
            f"Model '{model_name}' is an unfitted {type(obj).__name__}; fit it before saving."
        ) from None
    except TypeError:
        return
