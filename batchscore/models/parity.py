"""Whether a kernel reproduces the model it was converted from, checked on a probe batch.

A converter encodes a library's formula as of the versions we tested; a new library version
can change it, or a model can use an option the converter does not know. Scoring both on the
same small batch before the kernel is accepted turns such a difference into an opaque (exact)
fallback at compile time instead of wrong predictions in a table.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from batchscore.kernels.base import Kernel

PROBE_ROWS = 64
_SEED = 20240611


def parity_problem(obj: Any, kernel: Kernel) -> str | None:
    """None when `kernel` reproduces `obj` on a probe batch, else what differs (one phrase)."""
    rng = np.random.default_rng(_SEED)
    probe = np.asarray(kernel.probe(rng, PROBE_ROWS), dtype=np.float64)
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
