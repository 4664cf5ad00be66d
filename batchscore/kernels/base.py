"""The kernel interface every compiled model implements.

A kernel is plain data (numpy arrays, a model string) plus a `score` function over a feature
matrix. Keeping it free of Spark lets the planner inspect it (an affine map can be split by the
table that owns each feature) and lets tests check parity in milliseconds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

import numpy as np
import scipy.sparse as sp

Task = Literal["regression", "binary", "multiclass"]
Matrix: TypeAlias = "np.ndarray | sp.csr_matrix"


@dataclass(frozen=True)
class ScoreOutput:
    """The three prediction columns of the long layout, for one batch of rows.

    prediction: float64 (n,), NaN where the contract says null (multiclass, or `output: predict`
        on a classifier).
    label: object array of str (n,), or None for regressors.
    probability: float64 (n, n_classes) in the model's class order, or None.
    codes: where the kernel knows them, the label as int64 indices into its classes (-1 where
        the label is null), so the writer builds the string column with one `take` instead of
        converting n Python strings (the largest cost of wide outputs with many classifiers).
    """

    prediction: np.ndarray
    label: np.ndarray | None
    probability: np.ndarray | None
    codes: np.ndarray | None = None


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


def labels_from_codes(
    codes: np.ndarray, classes: tuple[str, ...], unknown: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, codes) for class indices; rows flagged `unknown` get a null label, code -1."""
    codes = np.asarray(codes, dtype=np.int64)
    labels: np.ndarray = np.asarray(classes, dtype=object)[codes]
    if unknown is not None and unknown.any():
        labels[unknown] = None
        codes = codes.copy()
        codes[unknown] = -1
    return labels, codes


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
    label, codes = labels_from_codes(np.argmax(probability, axis=1), classes, unknown)
    if not proba:
        return ScoreOutput(np.full(n, np.nan), label, None, codes)
    if len(classes) == 2:
        first = probability[:, 1].astype(np.float64, copy=False)
        return ScoreOutput(first, label, probability, codes)
    return ScoreOutput(np.full(n, np.nan), label, probability, codes)


def regressor_output(values: np.ndarray) -> ScoreOutput:
    return ScoreOutput(np.asarray(values, dtype=np.float64).reshape(-1), None, None)
