"""TreeEnsembleKernel: one IR, one strategy, the Kernel interface.

`compiled` (the default wherever a C compiler is on the driver) runs C code generated for the
model (kernels.trees.compiled); `native` delegates to the library's own predictor (LightGBM's
C++ via LightGBMNativeKernel, or the scikit-learn estimator via the opaque kernel); the numpy
strategies find exit leaves with array operations. All of them then sum leaf values, apply the
link and fill the long layout in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from batchscore.errors import ModelError
from batchscore.kernels.affine import as_float_matrix
from batchscore.kernels.base import (
    Kernel,
    KernelKind,
    Matrix,
    ScoreOutput,
    class_codes,
    classifier_output,
    regressor_output,
    row_max,
)
from batchscore.kernels.trees.compiled.forest import CompiledForest, ForestLoadError, compile_forest
from batchscore.kernels.trees.compiled.toolchain import CompileError
from batchscore.kernels.trees.ir import TreeEnsemble
from batchscore.kernels.trees.strategies import (
    LEAF_FUNCTIONS,
    PERFECT_MAX_DEPTH,
    Packed,
    chunk_rows,
)

STRATEGIES = ("compiled", "native", "traversal", "perfect", "gemm", "bitvector")
DEFAULT_BATCH_ROWS = 10_000
"""Arrow batches Spark hands to mapInArrow (spark.sql.execution.arrow.maxRecordsPerBatch)."""

GEMM_MAX_DEPTH = 3
PERFECT_AUTO_DEPTH = 10


def check_strategy(strategy: str | None) -> str | None:
    if strategy is not None and strategy not in STRATEGIES:
        raise ModelError(
            f"Unknown tree strategy '{strategy}'; use one of {', '.join(STRATEGIES)}, or leave "
            "strategy out to let batchscore choose."
        )
    return strategy


def choose_strategy(ir: TreeEnsemble, batch_rows: int = DEFAULT_BATCH_ROWS) -> str:
    """The array strategy for `ir` on batches of `batch_rows` (`strategy_reason` says why).

    Rule (bench/kernels.py, one thread, 10k-row batches, 2-core x86):
    - depth <= 3 (at most 8 leaves) and batch >= 256: gemm. The path matrix is tiny, so one
      dense float32 matmul per tree beats data-dependent gathers (hummingbird's rule); at 31
      leaves it is already 4x slower than traversal (it evaluates every node of every tree).
    - depth <= 10: perfect. Index arithmetic (2i+1 / 2i+2) with no leaf masks: RandomForest of
      depth 10: 61k rows/s vs 50k for traversal; padding costs 2^depth per tree, so no deeper.
    - deeper: traversal (depth-synchronous, one gather per level; LightGBM's leaf-wise trees
      reach depth 15-18 with 31 leaves: 43k rows/s at 100 trees vs 38k perfect, 19k bitvector).
    - bitvector (QuickScorer) is never the fastest in numpy because it evaluates every node;
      it is the form that factorizes by table (plan.rules.factorize_trees), so the planner or
      the spec asks for it explicitly.
    LightGBM keeps its native C++ predictor unless the spec forces a strategy (its converter).
    """
    return strategy_reason(ir, batch_rows)[0]


def strategy_reason(ir: TreeEnsemble, batch_rows: int = DEFAULT_BATCH_ROWS) -> tuple[str, str]:
    """`choose_strategy`'s pick and the reason, one phrase for explain."""
    depth, leaves = ir.max_depth, ir.max_leaves
    if depth <= GEMM_MAX_DEPTH and batch_rows >= 256:
        return "gemm", f"shallow trees (depth {depth} <= {GEMM_MAX_DEPTH})"
    if depth <= PERFECT_AUTO_DEPTH:
        return "perfect", f"medium depth {depth} <= {PERFECT_AUTO_DEPTH}"
    return "traversal", f"deep trees (depth {depth}, up to {leaves} leaves)"


class TreeEnsembleKernel(Kernel):
    """A tree ensemble in IR form, scored by one strategy."""

    kind: ClassVar[KernelKind] = KernelKind.TREE_ENSEMBLE

    def __init__(
        self,
        ir: TreeEnsemble,
        strategy: str,
        *,
        reason: str = "",
        native: Kernel | None = None,
        compiled: CompiledForest | None = None,
    ) -> None:
        check_strategy(strategy)
        if strategy == "native" and native is None:
            raise ModelError(f"{ir.source}: the native strategy needs the model's own predictor.")
        if strategy == "compiled" and compiled is None:
            raise ModelError(f"{ir.source}: the compiled strategy needs its compiled forest.")
        if strategy == "perfect" and ir.max_depth > PERFECT_MAX_DEPTH:
            raise ModelError(
                f"{ir.source} has trees of depth {ir.max_depth}; strategy 'perfect' pads every "
                f"tree to 2^depth leaves and stops at depth {PERFECT_MAX_DEPTH}. Use "
                "'traversal' or 'bitvector', or leave strategy out."
            )
        self.ir = ir
        self._strategy = strategy
        self.reason = reason or "forced by the spec"
        self.native = native
        self.compiled = compiled
        self._compiled_broken = ""
        self.task = ir.task
        self.classes = ir.classes
        self.n_features = ir.n_features
        self._packed: Packed | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_packed"] = None
        return state

    @property
    def strategy(self) -> str:
        return self._strategy

    def tree_ir(self) -> TreeEnsemble | None:
        return self.ir

    def compiled_forests(self) -> tuple[CompiledForest, ...]:
        """The C code this kernel loaded, so the run summary can say what compiling cost."""
        return () if self.compiled is None else (self.compiled,)

    @property
    def packed(self) -> Packed:
        if self._packed is None:
            self._packed = Packed(self.ir)
        return self._packed

    def leaves(self, X: Matrix, strategy: str | None = None) -> np.ndarray:
        """Exit leaf (IR numbering, left to right) of every tree for every row: (n, T) int64."""
        name = strategy or self.strategy
        X = as_float_matrix(X, self.n_features, f"Kernel tree_ensemble ({self.ir.source})")
        if name in ("native", "compiled"):  # compiled code sums leaves, it does not list them
            name = "traversal"
        fn = LEAF_FUNCTIONS[name]
        n = X.shape[0]
        P = self.packed
        step = chunk_rows(int(P.node_offset[-1]) if name in ("gemm", "bitvector") else 64)
        out = np.zeros((n, self.ir.n_trees), dtype=np.int64)
        for start in range(0, n, step):
            part: Any = X[start : start + step]
            dense = part.toarray() if sp.issparse(part) else np.asarray(part)
            out[start : start + step] = fn(P, self.ir.prepare(dense))
        return out

    def native_leaves(self, X: Matrix) -> np.ndarray:
        """Exit leaves in the source library's numbering (LightGBM leaf index, sklearn node)."""
        local = self.leaves(X)
        P = self.packed
        ids = np.concatenate([t.native_leaf for t in self.ir.trees])
        return np.asarray(ids[local + P.leaf_offset[:-1][None, :]])

    def raw(self, X: Matrix) -> np.ndarray:
        """base + sum of exit-leaf values / divisor: (n, n_outputs) float64, before the link."""
        if self.strategy == "compiled":
            forest = self._forest()
            if forest is not None:
                X = as_float_matrix(X, self.n_features, f"Kernel tree_ensemble ({self.ir.source})")
                return self.raw_from_sums(forest.sums(X))
        return self.raw_from_leaves(self.leaves(X))

    def raw_from_sums(self, total: np.ndarray) -> np.ndarray:
        """`raw` given the summed leaf values per output (the compiled forest's result)."""
        ir = self.ir
        if ir.divisor != 1.0:
            total = total / ir.divisor
        out: np.ndarray = ir.base_score[None, :] + total
        return out

    def _forest(self) -> CompiledForest | None:
        """The loaded compiled forest, or None (numpy traversal) when this process cannot load
        it (another platform than the driver's): same results, slower, said once in the log."""
        if self.compiled is None or self._compiled_broken:
            return None
        try:
            self.compiled.handle()
        except ForestLoadError as exc:
            self._compiled_broken = str(exc)
            import logging

            logging.getLogger("batchscore").warning(
                "%s: compiled trees cannot run here (%s); using the numpy traversal instead",
                self.ir.source,
                exc,
            )
            return None
        return self.compiled

    def raw_from_leaves(self, leaves: np.ndarray) -> np.ndarray:
        """`raw` given the exit leaves (n, T) (kernels.trees.merged finds them for many models)."""
        P, ir = self.packed, self.ir
        vals = P.leaf_values[leaves + P.leaf_offset[:-1][None, :]]  # (n, T, width)
        n, width = leaves.shape[0], vals.shape[2]
        outputs = np.asarray([t.output for t in ir.trees])
        if width == ir.n_outputs and not outputs.any():
            total = vals.sum(axis=1)
        else:
            total = np.zeros((n, ir.n_outputs))
            for k in range(ir.n_outputs):
                total[:, k] = vals[:, outputs == k, 0].sum(axis=1)
        if ir.divisor != 1.0:
            total = total / ir.divisor
        out: np.ndarray = ir.base_score[None, :] + total
        return out

    def score(self, X: Matrix, *, proba: bool = True) -> ScoreOutput:
        if self.strategy == "native":
            assert self.native is not None
            return self.native.score(X, proba=proba)
        return self.finish(self.raw(X), proba=proba)

    def finish(self, raw: np.ndarray, *, proba: bool = True) -> ScoreOutput:
        """The link, labels and output layout, from the raw sums."""
        ir = self.ir
        if ir.task == "regression":
            return regressor_output(np.exp(raw[:, 0]) if ir.link == "exp" else raw[:, 0])
        assert ir.classes is not None
        probability = self._probability(raw)
        if ir.label_rule == "proba_argmax":
            return classifier_output(probability, ir.classes, proba=proba)
        if ir.label_rule == "raw_argmax":
            codes = class_codes(np.argmax(raw, axis=1))
        else:
            r = raw[:, 0]
            codes = class_codes(r >= 0 if ir.label_rule == "raw_ge0" else r > 0)
        out = classifier_output(probability, ir.classes, proba=proba)
        return ScoreOutput(out.prediction, None, out.probability, codes, ir.classes)

    def _probability(self, raw: np.ndarray) -> np.ndarray:
        link = self.ir.link
        if link == "identity":
            return raw
        if link == "softmax":
            e = np.exp(raw - row_max(raw).reshape(-1, 1))
            out: np.ndarray = e / e.sum(axis=1, keepdims=True)
            return out
        if link == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-self.ir.link_scale * raw))
            return np.hstack((1.0 - p, p)) if raw.shape[1] == 1 else p
        raise ModelError(f"{self.ir.source}: link '{link}' does not give class probabilities.")

    def describe(self) -> str:
        ir = self.ir
        what = ir.task if ir.classes is None else f"{ir.task}, {len(ir.classes)} classes"
        objective = f", objective {ir.objective}" if ir.objective else ""
        return (
            f"tree_ensemble ({ir.source}: {what}{objective}, {ir.n_trees} trees, depth "
            f"{ir.max_depth}, <= {ir.max_leaves} leaves, {ir.n_features} inputs; strategy "
            f"{self.strategy}: {self.reason})"
        )


def make_tree_kernel(
    ir: TreeEnsemble, native: Callable[[], Kernel], *, model_name: str, strategy: str | None
) -> TreeEnsembleKernel:
    """The kernel a converter returns: the spec's `strategy` (forced) or `choose_strategy`'s."""
    forced = check_strategy(strategy)
    if forced is None:
        chosen, reason = strategy_reason(ir)
    else:
        chosen, reason = forced, "forced by the spec"
    if chosen == "perfect" and ir.max_depth > PERFECT_MAX_DEPTH:
        raise ModelError(
            f"Model '{model_name}' has trees of depth {ir.max_depth}; strategy 'perfect' pads "
            f"every tree to 2^depth leaves and stops at depth {PERFECT_MAX_DEPTH}. Use "
            "'traversal' or 'bitvector', or leave strategy out."
        )
    compiled = None
    if chosen == "compiled" or forced is None:
        compiled, problem = try_compile(ir)
        if compiled is not None:
            chosen, reason = "compiled", compiled_reason(compiled)
        elif forced == "compiled":
            raise ModelError(
                f"Model '{model_name}' sets strategy: compiled, but {problem}. Install a C "
                "compiler on the driver (gcc or clang; BATCHSCORE_CC names one), or leave "
                "strategy out."
            )
        else:
            reason = f"{reason}; not compiled: {problem}"
    return TreeEnsembleKernel(
        ir,
        chosen,
        reason=reason,
        native=native() if chosen == "native" else None,
        compiled=compiled,
    )


def try_compile(
    ir: TreeEnsemble, outputs: np.ndarray | None = None, n_outputs: int | None = None
) -> tuple[CompiledForest | None, str]:
    """The compiled forest of `ir`, or None and why not (no compiler, compiler failed)."""
    try:
        forest = compile_forest(ir, outputs, n_outputs)
    except CompileError as exc:
        return None, f"the C compiler failed ({exc})"
    if forest is None:
        return None, "no C compiler was found on the driver"
    return forest, ""


def compiled_reason(forest: CompiledForest) -> str:
    info = forest.info
    when = (
        f"cached (cold compile took {info.seconds:.1f} s)"
        if info.cache_hit
        else f"compiled in {info.seconds:.1f} s"
    )
    return f"C via {info.compiler}; {info.describe()}; {when}"


def refuse_or_native(
    problem: str,
    native: Callable[[], Kernel],
    *,
    model_name: str,
    what: str,
    strategy: str | None,
) -> Kernel:
    """A model the IR cannot express: its own predictor, unless the spec forced an array one."""
    if strategy is not None and strategy != "native":
        raise ModelError(
            f"Model '{model_name}' ({what}) cannot be scored with strategy '{strategy}': "
            f"{problem}. Use strategy: native, or leave strategy out."
        )
    return native()
