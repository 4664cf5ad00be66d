"""k affine models over one feature set as one matrix product (multi-model batched scoring).

The models of a group are scored from one union matrix: `S = X_union @ W_stack` (W_stack: the
models' weight columns side by side, zero rows where a model does not read an input), then each
model's own link runs on its column slice. X is assembled and read once instead of k times.

Zero weights would still let a NaN in an input a model does not read poison its decision
(0 * NaN = NaN), so NaNs are zeroed in the product and each model's rows with a NaN among its
OWN inputs are set to NaN afterwards: exactly what the unbatched product gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from batchscore.kernels.affine import AffineKernel, as_float_matrix
from batchscore.kernels.base import Matrix, ScoreOutput


class _Decided(AffineKernel):
    """The link stage of an affine model, fed decision values computed elsewhere."""

    def decision(self, X: Matrix) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) + self.b


def finisher(kernel: AffineKernel) -> AffineKernel:
    k = kernel.W.shape[1]
    return _Decided(np.eye(k), kernel.b, kernel.link, kernel.classes, source=kernel.source)


@dataclass(frozen=True, eq=False)
class AffineGroup:
    """Models scored together. `columns[i]`: the union-input columns model i reads."""

    names: tuple[str, ...]
    weights: np.ndarray
    slices: tuple[slice, ...]
    columns: tuple[np.ndarray, ...]
    finishers: tuple[AffineKernel, ...]

    def describe(self) -> str:
        d, k = self.weights.shape
        return f"one X @ W product, W {d} x {k}, instead of {len(self.names)}"

    def score(self, X: Matrix, proba: Sequence[bool]) -> list[ScoreOutput]:
        X = as_float_matrix(X, self.weights.shape[0], f"model group {', '.join(self.names)}")
        nan_rows, clean = _nan_rows(X)
        decisions = np.asarray(clean @ self.weights, dtype=np.float64)
        out = []
        for i, finish in enumerate(self.finishers):
            s = decisions[:, self.slices[i]]
            if nan_rows is not None:
                own = nan_rows[:, self.columns[i]].any(axis=1)
                if own.any():
                    s = s.copy()
                    s[own] = np.nan
            out.append(finish.score(s, proba=proba[i]))
        return out


def _nan_rows(X: Matrix) -> tuple[np.ndarray | None, Matrix]:
    """(a dense row x column NaN mask or None, X with NaNs replaced by 0)."""
    if isinstance(X, sp.csr_matrix):
        bad = np.isnan(X.data)
        if not bad.any():
            return None, X
        mask = sp.csr_matrix((bad, X.indices, X.indptr), shape=X.shape).toarray()
        clean = sp.csr_matrix((np.where(bad, 0.0, X.data), X.indices, X.indptr), shape=X.shape)
        return mask, clean
    bad = np.isnan(X)
    if not bad.any():
        return None, X
    return bad, np.where(bad, 0.0, X)


def stack(kernels: Sequence[AffineKernel], rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    """W_stack (width x sum k): each kernel's weight rows placed at its union input rows."""
    total = sum(k.W.shape[1] for k in kernels)
    W = np.zeros((width, total))
    start = 0
    for kernel, index in zip(kernels, rows, strict=True):
        k = kernel.W.shape[1]
        W[index, start : start + k] = kernel.W
        start += k
    return W
