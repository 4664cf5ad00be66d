"""The kernel interface every compiled model implements.

A kernel is plain data (numpy arrays, a model string) plus a `score` function over a feature
matrix. Keeping it free of Spark lets the planner inspect it (an affine map can be split by the
table that owns each feature) and lets tests check parity in milliseconds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal, TypeAlias

import numpy as np
import scipy.sparse as sp

Task = Literal["regression", "binary", "multiclass"]
Matrix: TypeAlias = "np.ndarray | sp.csr_matrix"


class ScoreOutput:
    """The three prediction columns of the long layout, for one batch of rows.

    prediction: float64 (n,), NaN where the contract says null (multiclass, or `output: predict`
        on a classifier).
    label: object array of str (n,), or None for regressors.
    probability: float64 (n, n_classes) in the model's class order, or None.
    codes: where the kernel knows them, the label as int64 indices into `classes` (-1 where
        the label is null). The writer builds the string column from the codes without ever
        making the n Python strings of `label`, which is built on first access only (with
        many classifiers per job those strings were the largest cost of the output).
    """

    __slots__ = ("_label", "classes", "codes", "prediction", "probability")

    def __init__(
        self,
        prediction: np.ndarray,
        label: np.ndarray | None,
        probability: np.ndarray | None,
        codes: np.ndarray | None = None,
        classes: tuple[str, ...] | None = None,
    ) -> None:
        if label is None and codes is not None and classes is None:
            raise ValueError("ScoreOutput: codes without a label need the classes")
        self.prediction = prediction
        self.probability = probability
        self.codes = codes
        self.classes = classes
        self._label = label

    @property
    def label(self) -> np.ndarray | None:
        if self._label is None and self.codes is not None and self.classes is not None:
            self._label = _labels_of(self.codes, self.classes)
        return self._label

    @property
    def has_label(self) -> bool:
        """A classifier's output (its label column is not all null by construction)."""
        return self._label is not None or self.codes is not None


class Kernel(ABC):
    """A compiled model: n_features inputs in the spec's feature order, one ScoreOutput out."""

    kind: ClassVar[str]
    n_features: int
    task: Task
    classes: tuple[str, ...] | None

    @abstractmethod
    def score(self, X: Matrix, *, proba: bool = True) -> ScoreOutput:
        """Score a float64 matrix (dense ndarray or CSR). `proba=False` means `output: predict`."""

    @abstractmethod
    def describe(self) -> str:
        """One line for `explain`: the kernel kind, its shape and strategy."""


def class_codes(indices: np.ndarray, unknown: np.ndarray | None = None) -> np.ndarray:
    """int64 class indices with -1 where the row has no class (`unknown`)."""
    codes = np.asarray(indices, dtype=np.int64)
    if unknown is not None and unknown.any():
        codes = np.where(unknown, -1, codes)
    return codes


def labels_from_codes(
    codes: np.ndarray, classes: tuple[str, ...], unknown: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, codes) for class indices; rows flagged `unknown` get a null label, code -1."""
    codes = class_codes(codes, unknown)
    return _labels_of(codes, classes), codes


def _labels_of(codes: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    labels: np.ndarray = np.asarray(classes, dtype=object)[np.maximum(codes, 0)]
    unknown = codes < 0
    if unknown.any():
        labels[unknown] = None
    return labels


def classifier_output(
    probability: np.ndarray, classes: tuple[str, ...], *, proba: bool
) -> ScoreOutput:
    """Fill the long-layout columns of a classifier from its class probabilities.

    The label is what `predict` gives: the first class with the highest probability. A row
    whose probabilities are NaN (a linear model fed a missing value) has no class: null, never
    the first class by accident of argmax.
    """
    n = probability.shape[0]
    unknown = np.isnan(probability).any(axis=1)
    codes = class_codes(np.argmax(probability, axis=1), unknown)
    if not proba:
        return ScoreOutput(np.full(n, np.nan), None, None, codes, classes)
    if len(classes) == 2:
        first = probability[:, 1].astype(np.float64, copy=False)
        return ScoreOutput(first, None, probability, codes, classes)
    return ScoreOutput(np.full(n, np.nan), None, probability, codes, classes)


def regressor_output(values: np.ndarray) -> ScoreOutput:
    return ScoreOutput(np.asarray(values, dtype=np.float64).reshape(-1), None, None)
