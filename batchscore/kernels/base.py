"""The kernel interface every compiled model implements.

A kernel is plain data (numpy arrays, a model string) plus a `score` function over a feature
matrix. Keeping it free of Spark lets the planner inspect it (an affine map can be split by the
table that owns each feature) and lets tests check parity in milliseconds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import numpy as np
import scipy.sparse as sp

from batchscore.kernels.task import Task as Task

if TYPE_CHECKING:
    from batchscore.kernels.trees.ir import TreeEnsemble

Matrix: TypeAlias = "np.ndarray | sp.csr_matrix"


class KernelKind(StrEnum):
    """What a kernel is, for the planner's rules and for `explain`.

    A str enum: it prints as its value in `explain`, lineage metadata and JSON, so those read
    as before, while a misspelt kind is a name error instead of a comparison that never holds.
    """

    AFFINE = "affine"
    TRANSFORMED = "transformed"
    TREE_ENSEMBLE = "tree_ensemble"
    LIGHTGBM_NATIVE = "lightgbm_native"
    OPAQUE = "opaque"


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
    """A compiled model: n_features inputs in the spec's feature order, one ScoreOutput out.

    Besides `score` and `describe`, a kernel answers a few questions the compiler and the
    planner ask of every kernel (`supports_proba`, `strategy`, `probe`, `tree_ir`). The
    defaults here are right for most kernels; a kernel that knows better overrides them, so
    what each kernel can do is read from its class, not guessed from its attributes.
    """

    kind: ClassVar[KernelKind]
    n_features: int
    task: Task
    classes: tuple[str, ...] | None

    @abstractmethod
    def score(self, X: Matrix, *, proba: bool = True) -> ScoreOutput:
        """Score a float64 matrix (dense ndarray or CSR). `proba=False` means `output: predict`."""

    @abstractmethod
    def describe(self) -> str:
        """One line for `explain`: the kernel kind, its shape and strategy."""

    @property
    def supports_proba(self) -> bool:
        """Whether `output: predict_proba` is possible: it decides a model's default output.

        A classifier has probabilities unless its kernel says otherwise (labels-only linear
        classifiers, estimators without predict_proba)."""
        return self.classes is not None

    @property
    def strategy(self) -> str:
        """How the trees are scored ("compiled", "native", "traversal", ...); "" for kernels
        without trees. The cost model prices a node test by it."""
        return ""

    def probe(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """A batch the model accepts, for checking a kernel against the model it came from.

        Random values spread well past typical feature scales, with a block of all-zero rows
        (a common edge: sparse rows, default splits). Kernels whose inputs must be valid codes
        (categories in a preprocessing stage) override it.
        """
        X = rng.normal(0.0, 3.0, size=(rows, self.n_features))
        X[: rows // 8] = 0.0
        return X

    def tree_ir(self) -> TreeEnsemble | None:
        """The trees this kernel scores, as IR, when a plan rule may rewrite them.

        None for kernels without trees, for trees the IR cannot express, and for kernels a
        rule has already rewritten (their inputs are no longer the IR's features).
        """
        return None


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


def row_max(x: np.ndarray) -> np.ndarray:
    """x.max(axis=1), the same values (NaN propagating), column by column where the rows are
    narrow: numpy's reduction over a short contiguous axis is slow (10,000 x 7: 0.47 ms
    against 0.035 ms)."""
    if x.ndim != 2 or not 0 < x.shape[1] <= 32:
        return np.asarray(x.max(axis=1))
    out = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        np.maximum(out, x[:, j], out=out)
    return out
