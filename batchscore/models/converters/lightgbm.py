"""LightGBM (Booster, LGBMRegressor, LGBMRanker, LGBMClassifier) -> compiled trees, or
LightGBMNativeKernel (LightGBM's own predictor).

The model is re-serialised with `model_to_string()`, which keeps the best iteration when early
stopping recorded one, exactly the trees `predict()` uses by default. What the output means is
read from the model's `objective=` header: an objective we do not know, or a custom one on a
classifier, has scores whose meaning we cannot vouch for, so it is refused. Reading the text
itself (header, IR) is `kernels.trees.lightgbm_text`'s, shared with the artifact loader and
the native kernel; this module only decides what the model means.
"""

from __future__ import annotations

from typing import Any

import lightgbm

from batchscore.errors import ModelError
from batchscore.kernels.base import Kernel, Task
from batchscore.kernels.lightgbm_native import LightGBMNativeKernel
from batchscore.kernels.trees.ir import UnsupportedTree
from batchscore.kernels.trees.kernel import (
    TreeEnsembleKernel,
    compiled_reason,
    make_tree_kernel,
    refuse_or_native,
    try_compile,
)
from batchscore.kernels.trees.lightgbm_text import header, lightgbm_ir, num_class, objective_of
from batchscore.models.converter_table import DEFAULT_OPTIONS, ConvertOptions, register

REGRESSION_OBJECTIVES = frozenset(
    {
        "regression",
        "regression_l1",
        "huber",
        "fair",
        "poisson",
        "quantile",
        "mape",
        "gamma",
        "tweedie",
        "cross_entropy",
        "cross_entropy_lambda",
        "lambdarank",
        "rank_xendcg",
    }
)
CLASSIFIER_OBJECTIVES = frozenset({"binary", "multiclass", "multiclassova"})


@register(lightgbm.Booster)
def booster(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """A bare Booster: the objective alone says what it predicts; classes are "0".."k-1"."""
    model_str = obj.model_to_string()
    objective = objective_of(model_str)
    task: Task = "regression"
    classes: tuple[str, ...] | None = None
    if objective == "binary":
        task, classes = "binary", ("0", "1")
    elif objective in ("multiclass", "multiclassova"):
        classes = tuple(str(i) for i in range(num_class(model_str)))
        task = "binary" if len(classes) == 2 else "multiclass"
    if classes is not None or objective in REGRESSION_OBJECTIVES:
        return _kernel(
            obj,
            model_str,
            objective,
            task,
            classes,
            source="Booster",
            model_name=model_name,
            options=options,
        )
    raise ModelError(
        f"Model '{model_name}' is a LightGBM Booster with objective '{objective}', so "
        "batchscore cannot tell what its scores mean. Save it from an LGBMRegressor or "
        "LGBMClassifier, or train it with a built-in objective."
    )


@register(lightgbm.LGBMRegressor, lightgbm.LGBMRanker)
def regressor(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """predict() is Booster.predict, whatever the objective, as long as it is one column."""
    model_str = _model_str(obj, model_name)
    objective = objective_of(model_str)
    if callable(getattr(obj, "objective_", None)):
        objective = "custom (raw scores, as predict gives them)"
    elif objective not in REGRESSION_OBJECTIVES | {"binary"}:
        raise ModelError(
            f"Model '{model_name}' is an {type(obj).__name__} with objective '{objective}', "
            "whose output is not one value per row; use an LGBMClassifier for multiclass "
            "objectives."
        )
    return _kernel(
        obj.booster_,
        model_str,
        objective,
        "regression",
        None,
        source=type(obj).__name__,
        model_name=model_name,
        options=options,
    )


@register(lightgbm.LGBMClassifier)
def classifier(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """Probabilities from Booster.predict; labels are `classes_` at the first highest one."""
    model_str = _model_str(obj, model_name)
    objective = objective_of(model_str)
    classes = tuple(str(c) for c in obj.classes_)
    if callable(getattr(obj, "objective_", None)) or objective not in CLASSIFIER_OBJECTIVES:
        raise ModelError(
            f"Model '{model_name}' is an LGBMClassifier with objective '{objective}'; its "
            "predict_proba returns raw scores, not probabilities. Retrain with objective "
            "'binary' or 'multiclass'."
        )
    expected = 2 if objective == "binary" else num_class(model_str)
    if expected != len(classes):
        raise ModelError(
            f"Model '{model_name}' is an LGBMClassifier with {len(classes)} classes but its "
            f"booster predicts {expected}; re-fit and save it again."
        )
    task: Task = "binary" if len(classes) == 2 else "multiclass"
    return _kernel(
        obj.booster_,
        model_str,
        objective,
        task,
        classes,
        source="LGBMClassifier",
        model_name=model_name,
        options=options,
    )


def _model_str(obj: Any, model_name: str) -> str:
    if not obj.__sklearn_is_fitted__():
        raise ModelError(
            f"Model '{model_name}' is an unfitted {type(obj).__name__}; fit it before saving."
        )
    return str(obj.booster_.model_to_string())


def _kernel(
    booster: Any,
    model_str: str,
    objective: str,
    task: Task,
    classes: tuple[str, ...] | None,
    *,
    source: str,
    model_name: str,
    options: ConvertOptions,
) -> Kernel:
    """Compiled trees by default, LightGBM's own predictor with `strategy: native`.

    With no `strategy:` the model is compiled (5-7x LightGBM's C++ predictor, bench/kernels.py)
    when a C compiler is on the driver; without one, or for what the IR cannot express, the
    native predictor is kept (the numpy strategies are slower than it).
    """
    native = LightGBMNativeKernel(
        model_str,
        task=task,
        classes=classes,
        n_features=int(booster.num_feature()),
        objective=objective,
        num_trees=len(header(model_str).get("tree_sizes", "").split()),
        source=source,
    )
    forced = options.strategy
    try:
        ir = lightgbm_ir(model_str, task=task, classes=classes, source=source)
    except UnsupportedTree as exc:
        return refuse_or_native(
            str(exc), lambda: native, model_name=model_name, what=source, strategy=forced
        )
    if forced is None:
        compiled, _problem = try_compile(ir)
        if compiled is None:
            return native
        return TreeEnsembleKernel(
            ir, "compiled", reason=compiled_reason(compiled), compiled=compiled
        )
    return make_tree_kernel(ir, lambda: native, model_name=model_name, strategy=forced)
