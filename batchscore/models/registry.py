"""Which converter turns which estimator class into a kernel.

Lookup is by exact class, then along the MRO, so subclasses such as LogisticRegressionCV reuse
their base's converter. A subclass that overrides a scoring method (predict, predict_proba,
decision_function) is *not* converted: its base's formula would no longer be its formula.

Every native kernel is checked against the estimator's own predictions on a small probe batch
before it is accepted. A converter that disagrees (a library version that changed a formula,
an option we did not model) falls back to the exact opaque kernel instead of scoring wrongly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from batchscore.errors import ModelError, did_you_mean
from batchscore.kernels.base import Kernel

_SCORING_METHODS = ("predict", "predict_proba", "decision_function", "_decision_function")
_PROBE_ROWS = 64


class Converter(Protocol):
    def __call__(self, obj: Any, *, model_name: str, n_features_hint: int | None) -> Kernel: ...


C = TypeVar("C", bound=Converter)

_CONVERTERS: dict[type, Converter] = {}


def register(*types: type) -> Callable[[C], C]:
    """Decorator: `@register(Ridge, Lasso)` makes the function their converter."""

    def wrap(fn: C) -> C:
        for t in types:
            _CONVERTERS[t] = fn
        return fn

    return wrap


def supported_types() -> list[str]:
    """Class names with a native converter, for messages and docs."""
    _load_converters()
    return sorted({t.__name__ for t in _CONVERTERS})


def compile_model(
    obj: Any, *, model_name: str, n_features_hint: int | None = None, opaque: bool = False
) -> Kernel:
    """Turn a loaded model object into a kernel: native when we can prove it exact, else opaque.

    `n_features_hint` is the input count the spec's features give; only opaque models that do
    not declare their own input count use it. `opaque=True` skips conversion.
    """
    _load_converters()
    from batchscore.models.converters.opaque import to_opaque

    converter, base = _lookup(type(obj))
    if opaque or (converter is not None and base is not type(obj) and _overrides(obj, base)):
        return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
    if converter is None:
        if callable(getattr(obj, "predict", None)):
            return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
        short = [name.rsplit(".", 1)[-1] for name in supported_types()]
        closest = did_you_mean(type(obj).__name__, short)
        hint = (
            closest.replace("Did you mean", "Closest supported:")
            if closest
            else f" Supported natively: {', '.join(short)}."
        )
        raise ModelError(
            f"Model '{model_name}' is a {_qualname(obj)}, which batchscore cannot score: it has "
            f"no predict() method.{hint} Save a fitted estimator with predict()/"
            "predict_proba() (any such object is scored as an opaque model)."
        )
        raise ModelError(
            f"Model '{model_name}' is a {_qualname(obj)}, which batchscore cannot score: it has "
            f"no predict() method.{closest} Save a fitted estimator with predict()/"
            "predict_proba() (any such object is scored as an opaque model)."
        )
    kernel = converter(obj, model_name=model_name, n_features_hint=n_features_hint)
    if kernel.kind == "opaque":
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


def parity_problem(obj: Any, kernel: Kernel) -> str | None:
    """None when `kernel` reproduces `obj` on a probe batch, else what differs (one phrase)."""
    rng = np.random.default_rng(20240611)
    own_probe = getattr(kernel, "probe", None)
    if callable(own_probe):  # kernels with categorical inputs know which values are valid
        probe = np.asarray(own_probe(rng, _PROBE_ROWS), dtype=np.float64)
    else:
        probe = rng.normal(0.0, 3.0, size=(_PROBE_ROWS, kernel.n_features))
        probe[: _PROBE_ROWS // 8] = 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _compare(obj, kernel, probe)
    except Exception as exc:  # the reference itself failed: cannot prove parity
        return f"probe failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _compare(obj: Any, kernel: Kernel, probe: np.ndarray) -> str | None:
    got = kernel.score(probe, proba=True)
    if kernel.classes is None:
        want = np.asarray(obj.predict(probe), dtype=np.float64).reshape(-1)
        return _close("prediction", got.prediction, want)
    if hasattr(obj, "classes_"):
        labels = np.asarray([str(v) for v in obj.predict(probe)], dtype=object)
        if got.label is None or not np.array_equal(got.label, labels):
            return "labels differ"
        if got.probability is None:  # a labels-only classifier (LinearSVC, hinge SGD, ...)
            return None
        want = np.asarray(obj.predict_proba(probe), dtype=np.float64)
    else:  # a bare LightGBM Booster: predict gives P(class 1), or one column per class
        raw = np.asarray(obj.predict(probe), dtype=np.float64)
        want = np.vstack((1.0 - raw, raw)).T if raw.ndim == 1 else raw
    assert got.probability is not None
    return _close("probability", got.probability, want)


def _close(what: str, got: np.ndarray, want: np.ndarray) -> str | None:
    if got.shape != want.shape:
        return f"{what} shape {got.shape} != {want.shape}"
    if np.allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True):
        return None
    return f"{what} max abs diff {float(np.nanmax(np.abs(got - want))):.3g}"


def _lookup(cls: type) -> tuple[Converter | None, type | None]:
    for klass in cls.__mro__:
        converter = _CONVERTERS.get(klass)
        if converter is not None:
            return converter, klass
    return None, None


def _overrides(obj: Any, base: type | None) -> bool:
    cls = type(obj)
    return any(getattr(cls, m, None) is not getattr(base, m, None) for m in _SCORING_METHODS)


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_converters() -> None:
    # Imported on first use: the converter modules import `register` from here.
    import batchscore.models.converters  # noqa: F401
