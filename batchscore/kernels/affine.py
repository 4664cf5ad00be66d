"""Affine kernels: `decision = X @ W + b`, then a link. Linear models compile to this.

The planner can see inside an affine map: W's rows belong to features, so a model over a
star schema can be split into per-table partial sums (factorized inference), and k models over
the same features can be stacked column-wise into one matrix product. W is therefore kept as
(d, k) and the link is applied only at the end.

Scores reproduce scikit-learn bit for bit where it can: the product is computed in the same
form and memory layout sklearn uses (`X @ coef_` for 1-d coefficients, `X @ coef_.T`
otherwise), and the links copy sklearn's formulas (expit, its softmax, LibLinear's OvR
normalisation). Labels come from the decision values, as `predict` does, not from rounded
probabilities.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from batchscore.errors import DataError
from batchscore.kernels.base import Kernel, Matrix, ScoreOutput, Task

Link = Literal["identity", "logistic", "binary_softmax", "softmax", "ovr"]

_LINK_TEXT: dict[str, str] = {
    "identity": "identity",
    "logistic": "expit (binary)",
    "binary_softmax": "softmax over [-s, s] (binary multinomial)",
    "softmax": "softmax (multinomial)",
    "ovr": "expit then row-normalised (one-vs-rest)",
}


def as_float_matrix(X: Matrix, n_features: int, who: str) -> Matrix:
    """Float64 dense or CSR input of the right width; anything else is a caller bug or bad data."""
    if sp.issparse(X):
        out = X if isinstance(X, sp.csr_matrix) else sp.csr_matrix(X)
        if out.dtype != np.float64:
            out = out.astype(np.float64)
    else:
        out = np.asarray(X, dtype=np.float64)
        if out.ndim != 2:
            raise DataError(f"{who} needs a 2-d feature matrix but got {out.ndim}-d input.")
    if n_features >= 0 and out.shape[1] != n_features:
        raise DataError(
            f"{who} expects {n_features} input columns but the batch has {out.shape[1]}; "
            "the features listed for this model must expand to exactly that many inputs."
        )
    return out


class AffineKernel(Kernel):
    """`link(X @ W + b)`: W (d, k) float64, b (k,), classes in the model's order (or None).

    `vector=True` marks a model whose sklearn coefficients are 1-d (single-target regressors):
    sklearn then computes a matrix-vector product, which we repeat to match it bit for bit.
    """

    kind: ClassVar[str] = "affine"

    def __init__(
        self,
        W: np.ndarray,
        b: np.ndarray,
        link: Link,
        classes: tuple[str, ...] | None = None,
        *,
        vector: bool = False,
        source: str = "",
    ) -> None:
        W = np.array(W, dtype=np.float64, order="K")
        b = np.array(b, dtype=np.float64).reshape(-1)
        if W.ndim != 2 or b.shape != (W.shape[1],):
            raise ValueError(f"W must be (d, k) and b (k,), got {W.shape} and {b.shape}")
        k = W.shape[1]
        if link == "identity":
            if k != 1 or classes is not None:
                raise ValueError("an identity link scores one regression output")
            task: Task = "regression"
        elif link in ("logistic", "binary_softmax"):
            if k != 1 or classes is None or len(classes) != 2:
                raise ValueError(f"a {link} link needs one decision column and two classes")
            task = "binary"
        else:
            if classes is None or len(classes) != k or k < 3:
                raise ValueError(f"a {link} link needs one decision column per class (>= 3)")
            task = "multiclass"
        if vector and k != 1:
            raise ValueError("vector=True needs a single decision column")
        self.W = W
        self.b = b
        self.link: Link = link
        self.classes = classes
        self.task = task
        self.n_features = W.shape[0]
        self.vector = vector
        self.source = source
        self.supports_proba = classes is not None

    def decision(self, X: Matrix) -> np.ndarray:
        """(n, k) decision values, computed the way sklearn's `decision_function` does."""
        if self.vector:
            return np.asarray(X @ self.W[:, 0] + self.b[0], dtype=np.float64).reshape(-1, 1)
        return np.asarray(X @ self.W + self.b, dtype=np.float64)

    def score(self, X: Matrix, *, proba: bool = True) -> ScoreOutput:
        X = as_float_matrix(X, self.n_features, f"Kernel {self.describe_short()}")
        s = self.decision(X)
        if self.link == "identity":
            return ScoreOutput(s[:, 0].copy(), None, None)
        n = s.shape[0]
        missing = np.isnan(s).any(axis=1)
        probability = self._probability(s) if proba else None
        classes = np.asarray(self.classes, dtype=object)
        idx = (s[:, 0] > 0).astype(np.intp) if s.shape[1] == 1 else np.argmax(s, axis=1)
        label = classes[idx]
        if missing.any():
            # A missing input leaves the decision undefined: null outputs, never a guess.
            label[missing] = None
            if probability is not None:
                probability[missing] = np.nan
        if probability is None:
            return ScoreOutput(np.full(n, np.nan), label, None)
        if self.task == "binary":
            return ScoreOutput(probability[:, 1].copy(), label, probability)
        return ScoreOutput(np.full(n, np.nan), label, probability)

    def _probability(self, s: np.ndarray) -> np.ndarray:
        if self.link == "logistic":
            p = expit(s[:, 0])
            return np.stack([1 - p, p], axis=1)
        if self.link == "binary_softmax":
            return _softmax(np.c_[-s[:, 0], s[:, 0]])
        if self.link == "softmax":
            return _softmax(s.copy())
        prob = expit(s)
        prob_sum = prob.sum(axis=1)
        all_zero = prob_sum == 0
        if all_zero.any():
            prob[all_zero, :] = 1
            prob_sum[all_zero] = prob.shape[1]
        prob /= prob_sum.reshape(prob.shape[0], -1)
        return np.asarray(prob)

    def describe_short(self) -> str:
        name = f" {self.source}" if self.source else ""
        return f"affine{name}"

    def describe(self) -> str:
        d, k = self.W.shape
        src = f"{self.source}: " if self.source else ""
        return (
            f"affine ({src}{d} inputs -> {k} decision column{'s' if k > 1 else ''}, "
            f"link {_LINK_TEXT[self.link]})"
        )


def _softmax(x: np.ndarray) -> np.ndarray:
    """sklearn.utils.extmath.softmax, step for step, so probabilities match to the last bit."""
    x -= x.max(axis=1).reshape(-1, 1)
    np.exp(x, out=x)
    x /= x.sum(axis=1).reshape(-1, 1)
    return x
