"""LightGBM scored by LightGBM's own C++ predictor, from the model's text form.

The kernel holds only the model string, which pickles small and safely to Spark workers; the
native Booster is built lazily, once per process, and cached by the string's sha256, because
parsing a large model per batch would cost more than scoring the batch. `Booster.predict`
already applies the objective's link (sigmoid, softmax, exp for poisson/gamma/tweedie), so
scores equal `LGBMClassifier.predict_proba` / `LGBMRegressor.predict` exactly.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from batchscore.kernels.affine import as_float_matrix
from batchscore.kernels.base import (
    Kernel,
    KernelKind,
    Matrix,
    ScoreOutput,
    Task,
    classifier_output,
    regressor_output,
)

if TYPE_CHECKING:
    from batchscore.kernels.trees.ir import TreeEnsemble

THREADS_ENV = "BATCHSCORE_THREADS"

_BOOSTERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def scoring_threads() -> int:
    """LightGBM threads per task: BATCHSCORE_THREADS (the physical layer sets spark.task.cpus).

    Defaults to 1 so that several Spark tasks on one executor do not oversubscribe its cores.
    """
    try:
        return max(1, int(os.environ.get(THREADS_ENV, "1")))
    except ValueError:
        return 1


def cached_booster(model_str: str, key: str) -> Any:
    """The process-wide Booster for `model_str`, parsed on first use."""
    booster = _BOOSTERS.get(key)
    if booster is None:
        with _LOCK:
            booster = _BOOSTERS.get(key)
            if booster is None:
                import lightgbm

                booster = lightgbm.Booster(model_str=model_str)
                _BOOSTERS[key] = booster
    return booster


def clear_booster_cache() -> None:
    """Drop every cached Booster (tests, or a long-lived driver that re-plans)."""
    with _LOCK:
        _BOOSTERS.clear()


class LightGBMNativeKernel(Kernel):
    """A LightGBM model string plus what its output means (task, classes, objective)."""

    kind: ClassVar[KernelKind] = KernelKind.LIGHTGBM_NATIVE

    def __init__(
        self,
        model_str: str,
        *,
        task: Task,
        classes: tuple[str, ...] | None,
        n_features: int,
        objective: str,
        num_trees: int,
        source: str = "Booster",
    ) -> None:
        self.model_str = model_str
        self.model_sha256 = hashlib.sha256(model_str.encode("utf-8")).hexdigest()
        self.task = task
        self.classes = classes
        self.n_features = n_features
        self.objective = objective
        self.num_trees = num_trees
        self.source = source
        self._ir: TreeEnsemble | None = None
        self._ir_parsed = False

    def __getstate__(self) -> dict[str, Any]:
        # Executors never read the IR, and it is about as large as the model string again.
        state = dict(self.__dict__)
        state["_ir"], state["_ir_parsed"] = None, False
        return state

    @property
    def booster(self) -> Any:
        return cached_booster(self.model_str, self.model_sha256)

    @property
    def strategy(self) -> str:
        return "native"

    def tree_ir(self) -> TreeEnsemble | None:
        """The model's trees parsed from its text, once per kernel, only when a plan rule asks
        (most jobs never do); None when the IR cannot express them (linear leaves, ...)."""
        if not self._ir_parsed:
            # Imported here: executors unpickle this kernel and never need the parser.
            from batchscore.kernels.trees.ir import UnsupportedTree
            from batchscore.kernels.trees.lightgbm_text import lightgbm_ir

            try:
                self._ir = lightgbm_ir(
                    self.model_str, task=self.task, classes=self.classes, source=self.source
                )
            except UnsupportedTree:
                self._ir = None
            self._ir_parsed = True
        return self._ir

    def raw_predict(self, X: Matrix) -> np.ndarray:
        """`Booster.predict` on float64 input (dense or CSR), NaN read as missing."""
        X = as_float_matrix(X, self.n_features, f"Kernel lightgbm_native ({self.source})")
        if X.shape[0] == 0:
            width = len(self.classes) if self.task == "multiclass" and self.classes else 0
            return np.zeros((0, width) if width else (0,), dtype=np.float64)
        out = self.booster.predict(X, num_threads=scoring_threads())
        return np.asarray(out, dtype=np.float64)

    def score(self, X: Matrix, *, proba: bool = True) -> ScoreOutput:
        raw = self.raw_predict(X)
        if self.task == "regression":
            return regressor_output(raw)
        assert self.classes is not None
        if raw.ndim == 1:
            probability = np.vstack((1.0 - raw, raw)).transpose()
        else:
            probability = raw
        return classifier_output(probability, self.classes, proba=proba)

    def describe(self) -> str:
        what = self.task if self.classes is None else f"{self.task}, {len(self.classes)} classes"
        return (
            f"lightgbm_native ({self.source}: {what}, objective {self.objective}, "
            f"{self.num_trees} trees, {self.n_features} inputs; strategy native: LightGBM's own "
            f"C++ predictor, the fastest at every batch size; threads from {THREADS_ENV})"
        )
