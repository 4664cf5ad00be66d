"""One model object -> one kernel: native where the parity probe proves it exact, else opaque.

This module dispatches through the converter table and imports no converter module, so the
pipeline converter can call `compile_model` for its final step without an import cycle. The
converter modules register themselves when imported; `models.compiled` imports all of them,
and every `batchscore.models` import goes through it.

A subclass that overrides a scoring method (predict, predict_proba, decision_function) is *not*
converted: its base's formula would no longer be its formula. A native kernel that disagrees
with the model's own predictions (a library version that changed a formula, an option we did
not model) falls back to the exact opaque kernel instead of scoring wrongly.
"""

from __future__ import annotations

from typing import Any

from batchscore.errors import ModelError, did_you_mean
from batchscore.kernels.base import Kernel, KernelKind
from batchscore.models.converter_table import (
    DEFAULT_OPTIONS,
    ConvertOptions,
    converter_for,
    supported_types,
)
from batchscore.models.converters.opaque import to_opaque
from batchscore.models.parity import parity_problem

_SCORING_METHODS = ("predict", "predict_proba", "decision_function", "_decision_function")


def compile_model(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None = None,
    opaque: bool = False,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """Turn a loaded model object into a kernel: native when we can prove it exact, else opaque.

    `n_features_hint` is the input count the spec's features give; only opaque models that do
    not declare their own input count use it. `opaque=True` skips conversion. `options` reach
    the converter unchanged (the spec's tree strategy).
    """
    converter, base = converter_for(type(obj))
    if opaque or (converter is not None and base is not type(obj) and _overrides(obj, base)):
        return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
    if converter is None:
        if callable(getattr(obj, "predict", None)):
            return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
        raise ModelError(
            f"Model '{model_name}' is a {_qualname(obj)}, which batchscore cannot score: it has "
            f"no predict() method.{_supported_hint(obj)} Save a fitted estimator with predict()/"
            "predict_proba() (any such object is scored as an opaque model)."
        )
    kernel = converter(obj, model_name=model_name, n_features_hint=n_features_hint, options=options)
    if kernel.kind is KernelKind.OPAQUE:
        return kernel
    problem = parity_problem(obj, kernel)
    if problem is None:
        return kernel
    fallback = to_opaque(
        obj,
        model_name=model_name,
        n_features_hint=n_features_hint,
        note=f"native {kernel.kind} kernel disagreed with the model ({problem})",
    )
    if fallback.task != kernel.task:
        raise ModelError(
            f"Model '{model_name}' ({_qualname(obj)}): its {kernel.kind} kernel disagrees with "
            f"the model's own predictions ({problem}); refusing to score it. Please report this "
            "with the model's library versions."
        )
    return fallback


def _supported_hint(obj: Any) -> str:
    short = [name.rsplit(".", 1)[-1] for name in supported_types()]
    closest = did_you_mean(type(obj).__name__, short)
    if closest:
        return closest.replace("Did you mean", "Closest supported:")
    return f" Supported natively: {', '.join(short)}."


def _overrides(obj: Any, base: type | None) -> bool:
    cls = type(obj)
    return any(getattr(cls, m, None) is not getattr(base, m, None) for m in _SCORING_METHODS)


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
