"""Affine kernels: `decision = X @ W + b`, then a link. Linear models compile to this.

The planner can see inside an affine map: W's rows belong to features, so a model over a
star schema can be split into per-table partial sums (factorized inference), and k models over
the same features can be stacked column-wise into one matrix product. W is therefore kept as
(d, k) and the link is applied only at the end.

Scores reproduce scikit-learn bit for bit where it can: the product is computed in the same
form and memory layout sklearn uses (`X @ coef_` for 1-d coefficients, `X @ coef_.T`
otherwise), and the links copy sklearn's formulas (expit, its softmax, LibLinear's OvR
normalisation). Labels come from the decision values, as `predict` does.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from batchscore.errors import DataError
from batchscore.kernels.base import (
    Kernel,
    KernelKind,
    Matrix,
    ScoreOutput,
    Task,
    class_codes,
    row_max,
)

Link = Literal[
    "identity",
    "exp",
    "logistic",
    "binary_softmax",
    "softmax",
    "ovr",
    "modified_huber",
    "decision",
]
"""How decision values become outputs.

identity: regression, the decision itself. exp: regression through a log link (Poisson, Gamma,
Tweedie GLMs: `exp(X @ coef_ + intercept_)`). logistic / binary_softmax / softmax / ovr /
modified_huber: classifiers with probabilities (modified_huber: SGDClassifier's clipped formula).
decision: classifiers without probabilities (LinearSVC, hinge SGD, Perceptron, RidgeClassifier):
the label is `decision > 0` (binary) or the argmax, as `predict` gives it.
"""

REGRESSION_LINKS: frozenset[str] = frozenset({"identity", "exp"})

_LINK_TEXT: dict[str, str] = {
    "identity": "identity",
    "exp": "exp (log-link GLM)",
    "logistic": "expit (binary)",
    "binary_softmax": "softmax over [-s, s] (binary multinomial)",
    "softmax": "softmax (multinomial)",
    "ovr": "expit then row-normalised (one-vs-rest)",
    "modified_huber": "(clip(s, -1, 1) + 1) / 2, row-normalised (modified Huber)",
    "decision": "sign / argmax of the decision values (labels only)",
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

    kind: ClassVar[KernelKind] = KernelKind.AFFINE

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
        if link in REGRESSION_LINKS:
            if k != 1 or classes is not None:
                raise ValueError(f"an {link} link scores one regression output")
            task: Task = "regression"
        elif link in ("decision", "modified_huber"):
            if (
                classes is None
                or len(classes) < 2
                or k != (1 if len(classes) == 2 else len(classes))
            ):
                raise ValueError(
                    f"a {link} link needs two classes and one column, or one column per class"
                )
            task = "binary" if len(classes) == 2 else "multiclass"
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

    @property
    def supports_proba(self) -> bool:
        """A "decision" link gives labels only (LinearSVC, Perceptron, RidgeClassifier)."""
        return self.classes is not None and self.link != "decision"

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
        if self.link == "exp":
            return ScoreOutput(np.exp(s[:, 0]), None, None)
        n = s.shape[0]
        missing = np.isnan(s).any(axis=1)
        probability = self._probability(s) if proba and self.supports_proba else None
        assert self.classes is not None
        idx = (s[:, 0] > 0).astype(np.int64) if s.shape[1] == 1 else np.argmax(s, axis=1)
        # A missing input leaves the decision undefined: null outputs, never a guess.
        codes = class_codes(idx, missing)
        if probability is not None and missing.any():
            probability[missing] = np.nan
        if probability is None:
            return ScoreOutput(np.full(n, np.nan), None, None, codes, self.classes)
        if self.task == "binary":
            # A strided view of the positive column: the writer reads it once, no copy needed.
            return ScoreOutput(probability[:, 1], None, probability, codes, self.classes)
        return ScoreOutput(np.full(n, np.nan), None, probability, codes, self.classes)

    def _probability(self, s: np.ndarray) -> np.ndarray:
        if self.link == "logistic":
            prob = np.empty((s.shape[0], 2))
            expit(s[:, 0], out=prob[:, 1])
            np.subtract(1, prob[:, 1], out=prob[:, 0])
            return prob
        if self.link == "binary_softmax":
            return _softmax(np.c_[-s[:, 0], s[:, 0]])
        if self.link == "softmax":
            return _softmax(s.copy())
        if self.link == "modified_huber":
            return _modified_huber(s)
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


def _modified_huber(s: np.ndarray) -> np.ndarray:
    """SGDClassifier(loss='modified_huber').predict_proba, step for step."""
    if s.shape[1] == 1:
        prob2 = np.ones((s.shape[0], 2))
        p = np.clip(s[:, 0], -1, 1)
        p += 1.0
        p /= 2.0
        prob2[:, 1] = p
        prob2[:, 0] -= p
        return prob2
    prob = np.clip(s, -1, 1)
    prob += 1.0
    prob /= 2.0
    prob_sum = prob.sum(axis=1)
    all_zero = prob_sum == 0
    if all_zero.any():
        prob[all_zero, :] = 1
        prob_sum[all_zero] = prob.shape[1]
    prob /= prob_sum.reshape((prob.shape[0], -1))
    return np.asarray(prob)


def _softmax(x: np.ndarray) -> np.ndarray:
    """sklearn.utils.extmath.softmax, step for step, so probabilities match to the last bit."""
    x -= row_max(x).reshape(-1, 1)
    np.exp(x, out=x)
    x /= x.sum(axis=1).reshape(-1, 1)
    return x


# ---------------------------------------------------------------- input stages
#
# A fitted preprocessing front end (scalers, imputers, one-hot encoders, column selection) is
# a tree of small per-column operations. Each op maps a dense float64 batch (n, n_in) to
# (n, n_out) and may mark rows invalid (an unseen category where the encoder said 'error').
# They copy scikit-learn's arithmetic step for step (`X -= mean; X /= scale`, `X *= s; X += m`)
# so a kernel behind a stage scores like the pipeline it came from.


class StageOp:
    """One preprocessing step. Subclasses set n_in and n_out and implement `apply`."""

    n_in: int
    n_out: int

    def apply(self, X: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Transform `X` (never modified); set `bad[i]` for rows the step cannot transform."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def categories(self) -> dict[int, np.ndarray]:
        """Known categories per input column (for probe batches); empty for numeric steps."""
        return {}


class SelectColumns(StageOp):
    """`X[:, indices]`: column selection, reordering or dropping (ColumnTransformer)."""

    def __init__(self, indices: np.ndarray, n_in: int) -> None:
        self.indices = np.asarray(indices, dtype=np.intp).reshape(-1)
        self.n_in = n_in
        self.n_out = len(self.indices)

    def apply(self, X: np.ndarray, bad: np.ndarray) -> np.ndarray:
        return X[:, self.indices]

    def describe(self) -> str:
        return f"select {self.n_out} of {self.n_in}"


class FillMissing(StageOp):
    """Replace NaN in column j by `values[j]` (SimpleImputer); a NaN value means no fill."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64).reshape(-1)
        self.n_in = self.n_out = len(self.values)

    def apply(self, X: np.ndarray, bad: np.ndarray) -> np.ndarray:
        out = X.copy()
        missing = np.isnan(out)
        if missing.any():
            out[missing] = np.broadcast_to(self.values, out.shape)[missing]
        return out

    def describe(self) -> str:
        return f"fill NaN ({self.n_in})"


class ScaleColumns(StageOp):
    """`clip(((x - sub) / div) * mul + add, lo, hi)` per column; identity parts are exact."""

    def __init__(
        self,
        sub: np.ndarray,
        div: np.ndarray,
        mul: np.ndarray,
        add: np.ndarray,
        lo: np.ndarray | None = None,
        hi: np.ndarray | None = None,
        *,
        name: str = "scale",
    ) -> None:
        self.sub = np.asarray(sub, dtype=np.float64).reshape(-1)
        self.div = np.asarray(div, dtype=np.float64).reshape(-1)
        self.mul = np.asarray(mul, dtype=np.float64).reshape(-1)
        self.add = np.asarray(add, dtype=np.float64).reshape(-1)
        self.lo = None if lo is None else np.asarray(lo, dtype=np.float64).reshape(-1)
        self.hi = None if hi is None else np.asarray(hi, dtype=np.float64).reshape(-1)
        self.n_in = self.n_out = len(self.sub)
        self.name = name
        if not (len(self.div) == len(self.mul) == len(self.add) == self.n_in):
            raise ValueError("ScaleColumns parts must have one value per column")

    @property
    def clips(self) -> bool:
        return self.lo is not None or self.hi is not None

    def apply(self, X: np.ndarray, bad: np.ndarray) -> np.ndarray:
        out = X - self.sub
        out /= self.div
        out *= self.mul
        out += self.add
        if self.clips:
            np.clip(out, self.lo, self.hi, out=out)
        return out

    def describe(self) -> str:
        return f"{self.name} ({self.n_in})"


class MissingIndicator(StageOp):
    """1.0 where column `features[j]` is NaN, else 0.0 (SimpleImputer(add_indicator=True))."""

    def __init__(self, features: np.ndarray, n_in: int) -> None:
        self.features = np.asarray(features, dtype=np.intp).reshape(-1)
        self.n_in = n_in
        self.n_out = len(self.features)

    def apply(self, X: np.ndarray, bad: np.ndarray) -> np.ndarray:
        return np.asarray(np.isnan(X[:, self.features]), dtype=np.float64)

    def describe(self) -> str:
        return f"missing indicator ({self.n_out})"


UNKNOWN_ZERO = -1
"""OneHot: an unseen value contributes nothing (handle_unknown='ignore')."""
UNKNOWN_ERROR = -2
"""OneHot: an unseen value makes the row invalid: its outputs are null (handle_unknown='error')."""


class OneHot(StageOp):
    """Per input column j: a value equal to `categories[j][c]` sets output `slots[j][c]`.

    Slots are indices into the whole output (-1: no column, a dropped category). `unknown[j]`
    is a slot for unseen values (an infrequent bucket), UNKNOWN_ZERO or UNKNOWN_ERROR. NaN is
    a category when the encoder saw NaN while fitting.
    """

    def __init__(
        self,
        categories: list[np.ndarray],
        slots: list[np.ndarray],
        unknown: list[int],
        n_out: int,
    ) -> None:
        self.cats = [np.asarray(c, dtype=np.float64).reshape(-1) for c in categories]
        self.slots = [np.asarray(s, dtype=np.intp).reshape(-1) for s in slots]
        self.unknown = [int(u) for u in unknown]
        self.n_in = len(self.cats)
        self.n_out = n_out
        if not (len(self.slots) == len(self.unknown) == self.n_in):
            raise ValueError("OneHot needs categories, slots and unknown per input column")

    def apply(self, X: np.ndarray, bad: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        out = np.zeros((n, self.n_out), dtype=np.float64)
        rows = np.arange(n)
        for j, (cats, slots, unknown) in enumerate(
            zip(self.cats, self.slots, self.unknown, strict=True)
        ):
            x = X[:, j]
            slot = np.full(n, UNKNOWN_ZERO, dtype=np.intp)
            found = np.zeros(n, dtype=bool)
            for c, s in zip(cats, slots, strict=True):
                hit = np.isnan(x) if np.isnan(c) else x == c
                slot[hit] = s
                found |= hit
            if unknown == UNKNOWN_ERROR:
                bad |= ~found
            elif unknown >= 0:
                slot[~found] = unknown
            keep = slot >= 0
            out[rows[keep], slot[keep]] = 1.0
        return out

    def describe(self) -> str:
        return f"one-hot ({self.n_in} -> {self.n_out})"

    def categories(self) -> dict[int, np.ndarray]:
        return dict(enumerate(self.cats))


class Concat(StageOp):
    """Side by side: each part reads its own input columns (ColumnTransformer)."""

    def __init__(self, parts: list[tuple[np.ndarray, StageOp]], n_in: int) -> None:
        self.parts = [(np.asarray(i, dtype=np.intp).reshape(-1), op) for i, op in parts]
        self.n_in = n_in
        self.n_out = sum(op.n_out for _, op in self.parts)
        for idx, op in self.parts:
            if len(idx) != op.n_in:
                raise ValueError("a Concat part reads exactly its op's input columns")

    def apply(self, X: np.ndarray, bad: np.ndarray) -> np.ndarray:
        if not self.parts:
            return np.zeros((X.shape[0], 0))
        return np.hstack([op.apply(X[:, idx], bad) for idx, op in self.parts])

    def describe(self) -> str:
        return "[" + " | ".join(op.describe() for _, op in self.parts) + "]"

    def categories(self) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for idx, op in self.parts:
            for j, cats in op.categories().items():
                out.setdefault(int(idx[j]), cats)
        return out


class Chain(StageOp):
    """One op after the other (Pipeline)."""

    def __init__(self, ops: list[StageOp], n_in: int) -> None:
        self.ops = list(ops)
        self.n_in = n_in
        width = n_in
        for op in self.ops:
            if op.n_in != width:
                raise ValueError(f"stage op {op.describe()} takes {op.n_in} inputs, got {width}")
            width = op.n_out
        self.n_out = width

    def apply(self, X: np.ndarray, bad: np.ndarray) -> np.ndarray:
        for op in self.ops:
            X = op.apply(X, bad)
        return X

    def describe(self) -> str:
        return " -> ".join(op.describe() for op in self.ops) if self.ops else "identity"

    def categories(self) -> dict[int, np.ndarray]:
        # Categories map to raw input columns only through column-preserving NaN fills.
        for op in self.ops:
            found = op.categories()
            if found or not isinstance(op, FillMissing):
                return found
        return {}


def affine_form(op: StageOp) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`out[:, i] = X[:, src[i]] * m[i] + o[i]` when `op` is only selections and scalings.

    None when the op fills NaN, clips, one-hot encodes or marks missing values: those are not
    affine maps, so a kernel behind them keeps its stage.
    """
    if isinstance(op, SelectColumns):
        k = op.n_out
        return op.indices.copy(), np.ones(k), np.zeros(k)
    if isinstance(op, ScaleColumns):
        if op.clips:
            return None
        m = op.mul / op.div
        return np.arange(op.n_in, dtype=np.intp), m, op.add - op.sub * m
    if isinstance(op, Chain):
        src = np.arange(op.n_in, dtype=np.intp)
        mul, off = np.ones(op.n_in), np.zeros(op.n_in)
        for inner in op.ops:
            form = affine_form(inner)
            if form is None:
                return None
            s2, m2, o2 = form
            src, mul, off = src[s2], mul[s2] * m2, off[s2] * m2 + o2
        return src, mul, off
    if isinstance(op, Concat):
        pieces = []
        for idx, inner in op.parts:
            form = affine_form(inner)
            if form is None:
                return None
            pieces.append((idx[form[0]], form[1], form[2]))
        if not pieces:
            return np.zeros(0, dtype=np.intp), np.zeros(0), np.zeros(0)
        return (
            np.concatenate([p[0] for p in pieces]),
            np.concatenate([p[1] for p in pieces]),
            np.concatenate([p[2] for p in pieces]),
        )
    return None


def fold_affine(op: StageOp, kernel: AffineKernel) -> AffineKernel | None:
    """An AffineKernel over the raw inputs equal to `kernel` behind `op`, when `op` is affine.

    Algebraically exact; in floating point the sums are regrouped, so a caller checks parity.
    None when some input is dropped by the stage (NaN there must not reach the product).
    """
    form = affine_form(op)
    if form is None or op.n_out != kernel.n_features:
        return None
    src, mul, off = form
    if len(np.unique(src)) != op.n_in:
        return None  # an input the stage drops must not turn the decision into NaN
    W = np.zeros((op.n_in, kernel.W.shape[1]))
    np.add.at(W, src, kernel.W * mul[:, None])
    b = kernel.b + off @ kernel.W
    return AffineKernel(
        W,
        b,
        kernel.link,
        kernel.classes,
        vector=kernel.vector,
        source=f"{kernel.source} + folded preprocessing" if kernel.source else "folded",
    )


class TransformedKernel(Kernel):
    """`inner.score(stage(X))`: a preprocessing front end the planner can read, then a kernel.

    Rows the stage marks invalid (a category unseen in training, where the encoder was fitted
    with handle_unknown='error') score as nulls, as a missing input does for a linear model:
    scikit-learn would raise for the whole batch; batchscore fails only that row. Sparse input
    is densified before the stage (every stage op is per column on dense values).
    """

    kind: ClassVar[KernelKind] = KernelKind.TRANSFORMED

    def __init__(self, stage: StageOp, inner: Kernel, *, source: str = "") -> None:
        if inner.n_features >= 0 and stage.n_out != inner.n_features:
            raise ValueError(
                f"stage gives {stage.n_out} columns but the kernel takes {inner.n_features}"
            )
        self.stage = stage
        self.inner = inner
        self.n_features = stage.n_in
        self.task = inner.task
        self.classes = inner.classes
        self.source = source

    @property
    def supports_proba(self) -> bool:
        return self.inner.supports_proba

    def transform(self, X: Matrix) -> tuple[np.ndarray, np.ndarray]:
        """The stage's output for a batch, and which rows it could not transform."""
        X = as_float_matrix(X, self.n_features, f"Kernel transformed {self.source}".rstrip())
        dense = sp.csr_matrix.toarray(X) if sp.issparse(X) else np.asarray(X)
        bad = np.zeros(dense.shape[0], dtype=bool)
        return self.stage.apply(dense, bad), bad

    def score(self, X: Matrix, *, proba: bool = True) -> ScoreOutput:
        Z, bad = self.transform(X)
        out = self.inner.score(Z, proba=proba)
        if not bad.any():
            return out
        prediction = out.prediction.copy()
        prediction[bad] = np.nan
        probability = None if out.probability is None else out.probability.copy()
        if probability is not None:
            probability[bad] = np.nan
        codes = None if out.codes is None else out.codes.copy()
        if codes is not None:
            codes[bad] = -1
            if out.classes is not None:
                return ScoreOutput(prediction, None, probability, codes, out.classes)
        label = None if out.label is None else out.label.copy()
        if label is not None:
            label[bad] = None
        return ScoreOutput(prediction, label, probability, codes)

    def probe(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """A batch the stage accepts: known categories in encoded columns, some NaN elsewhere."""
        X = rng.normal(0.0, 3.0, size=(rows, self.n_features))
        X[rng.random(X.shape) < 0.1] = np.nan
        for j, cats in self.stage.categories().items():
            X[:, j] = rng.choice(cats, size=rows)
        return X

    def describe(self) -> str:
        return f"transformed ({self.stage.describe()}) -> {self.inner.describe()}"
