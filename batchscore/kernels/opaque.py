"""The fallback kernel: call the estimator's own predict / predict_proba on each batch.

Anything with a `predict` method can be scored this way (pipelines, custom classes, models we
have no converter for). The planner cannot see inside it, so it is never factorized or
stacked, but it is always exact: it *is* the model. The estimator itself is pickled to the
workers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from batchscore.errors import DataError, collapsed
from batchscore.kernels.affine import as_float_matrix
from batchscore.kernels.base import Kernel, KernelKind, Matrix, ScoreOutput, Task, class_codes

UNKNOWN_N_FEATURES = -1
"""`n_features` of a model that does not say how many inputs it takes (no n_features_in_)."""


ARGMAX_PREDICTORS = (
    ("sklearn.ensemble._forest", "ForestClassifier"),
    ("sklearn.tree._classes", "DecisionTreeClassifier"),
)
"""scikit-learn classifiers whose `predict` IS `classes_[argmax(predict_proba)]` (single
output): their label can come from the probabilities already computed."""


def _predict_is_proba_argmax(estimator: Any) -> bool:
    if getattr(estimator, "n_outputs_", 1) != 1:
        return False
    for cls in type(estimator).__mro__:
        if (cls.__module__, cls.__name__) in ARGMAX_PREDICTORS:
            return True
    return False


class OpaqueKernel(Kernel):
    """Scores by calling the estimator. `classes` None means a regressor."""

    kind: ClassVar[KernelKind] = KernelKind.OPAQUE

    def __init__(
        self,
        estimator: Any,
        *,
        task: Task,
        classes: tuple[str, ...] | None,
        n_features: int,
        model_name: str = "",
        note: str = "",
    ) -> None:
        self.estimator = estimator
        self.task = task
        self.classes = classes
        self.n_features = n_features
        self.model_name = model_name
        self.note = note
        self._proba = classes is not None and callable(getattr(estimator, "predict_proba", None))
        # Set once a sparse batch was refused, so later batches skip the failing attempt.
        self.densify = False
        self.label_is_argmax = self._proba and _predict_is_proba_argmax(estimator)

    @property
    def supports_proba(self) -> bool:
        """A classifier without predict_proba (an SVC without probability=True) gives labels."""
        return self._proba

    @property
    def class_name(self) -> str:
        return type(self.estimator).__name__

    def _who(self) -> str:
        name = f"Model '{self.model_name}'" if self.model_name else "Model"
        return f"{name} (opaque {self.class_name})"

    def _call(self, method: str, X: Matrix) -> np.ndarray:
        fn = getattr(self.estimator, method)
        if sp.issparse(X) and self.densify:
            X = sp.csr_matrix.toarray(X)
        try:
            return np.asarray(fn(X))
        except (TypeError, ValueError) as exc:
            if not sp.issparse(X):
                raise DataError(
                    f"{self._who()} failed in {method}(): {collapsed(exc)}. "
                    "Check the batch's values (missing values need a model that accepts NaN)."
                ) from exc
        self.densify = True
        return self._call(method, X)

    def score(self, X: Matrix, *, proba: bool = True) -> ScoreOutput:
        """The estimator's own output. A batch its predict refuses because of NaN/inf rows
        (most scikit-learn models) is scored without those rows, which come out null, as
        batchscore's own kernels give them (the run summary counts them)."""
        X = as_float_matrix(X, self.n_features, self._who())
        n = X.shape[0]
        if n == 0:
            return _empty(self.classes, proba=proba)
        try:
            return self._score_all(X, n, proba)
        except DataError:
            finite = _finite_rows(X)
            if finite.all() or not finite.any():
                raise
        part = self._score_all(X[finite], int(finite.sum()), proba)
        return _expand(part, finite, self.classes)

    def _score_all(self, X: Matrix, n: int, proba: bool) -> ScoreOutput:
        if self.classes is None:
            values = self._call("predict", X).astype(np.float64, copy=False)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.shape != (n,):
                raise DataError(
                    f"{self._who()} returned predictions of shape {values.shape} for {n} rows; "
                    "batchscore scores one value per row (fit one model per target)."
                )
            return ScoreOutput(values, None, None)
        if proba and self.label_is_argmax:  # one call instead of two (forests: half the time)
            probability = self._probability(X, n)
            assert self.classes is not None
            codes = class_codes(np.argmax(probability, axis=1))
            label = None
        else:
            label = np.asarray([str(v) for v in self._call("predict", X)], dtype=object)
            codes = None
            if not proba:
                return ScoreOutput(np.full(n, np.nan), label, None)
            probability = self._probability(X, n)
        prediction = probability[:, 1].copy() if self.task == "binary" else np.full(n, np.nan)
        return ScoreOutput(prediction, label, probability, codes, self.classes)

    def _probability(self, X: Matrix, n: int) -> np.ndarray:
        assert self.classes is not None
        probability = self._call("predict_proba", X).astype(np.float64, copy=False)
        if probability.shape != (n, len(self.classes)):
            raise DataError(
                f"{self._who()} returned predict_proba of shape {probability.shape}, expected "
                f"({n}, {len(self.classes)}); score it with output: predict instead."
            )
        return probability

    def describe(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return f"opaque ({self.class_name}){note}"


def _finite_rows(X: Matrix) -> np.ndarray:
    """Rows whose every value is finite."""
    if sp.issparse(X):
        csr = sp.csr_matrix(X)
        bad = ~np.isfinite(csr.data)
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        out = np.ones(csr.shape[0], dtype=bool)
        out[rows[bad]] = False
        return out
    return np.asarray(np.isfinite(np.asarray(X)).all(axis=1))


def _expand(part: ScoreOutput, rows: np.ndarray, classes: tuple[str, ...] | None) -> ScoreOutput:
    """`part` (scored on `rows` only) spread over all rows, null elsewhere."""
    n = rows.shape[0]
    prediction = np.full(n, np.nan)
    prediction[rows] = part.prediction
    probability = None
    if part.probability is not None:
        probability = np.full((n, part.probability.shape[1]), np.nan)
        probability[rows] = part.probability
    codes = None
    if part.codes is not None:
        codes = np.full(n, -1, dtype=np.int64)
        codes[rows] = part.codes
        return ScoreOutput(prediction, None, probability, codes, classes)
    label = None
    if part.label is not None:
        label = np.full(n, None, dtype=object)
        label[rows] = part.label
    return ScoreOutput(prediction, label, probability, None, classes)


def _empty(classes: tuple[str, ...] | None, *, proba: bool) -> ScoreOutput:
    if classes is None:
        return ScoreOutput(np.zeros(0), None, None)
    probability = np.zeros((0, len(classes))) if proba else None
    return ScoreOutput(np.zeros(0), np.zeros(0, dtype=object), probability)
