"""Whether scoring is heavy enough to spread a few-file fact scan over every core first.

A day's partition is often one or two files, which Spark reads as one or two tasks; every
stage above the scan inherits that. Spreading the fact rows (one shuffle of the fact columns)
lets every core score, which pays when scoring costs more per row than moving the row: measured
on this 2-core machine, a 1,000-tree LightGBM job (4 fact columns) ran on one core without it,
while Walmart's scan-bound job (logistic regression + 210 small trees) lost 0.6 s of 1.6 s to
the shuffle. Both sides are in the cost model's unit (bytes moved; FLOPs x FLOP_WEIGHT).
"""

from __future__ import annotations

from batchscore.kernels.base import Kernel
from batchscore.kernels.lightgbm_native import LightGBMNativeKernel
from batchscore.kernels.trees.kernel import TreeEnsembleKernel
from batchscore.plan.cost import FLOP_WEIGHT, TEST_FLOPS, value_bytes
from batchscore.plan.nodes import LogicalPlan

SHUFFLE_FACTOR = 4.0
"""A shuffled byte is written, read back and decoded: about four moved bytes."""
NODES_PER_NATIVE_TREE = 30
"""LightGBM's default 31 leaves, for a native kernel whose IR is not parsed."""


def scoring_cost_per_row(plan: LogicalPlan) -> float:
    """Tree models' node tests, in the cost model's unit; GLMs count nothing: a batched GLM
    pass runs at the speed of the scan and the write (bench/glms.py)."""
    return sum(_kernel_cost(b.model.kernel) for b in plan.models)


def fact_bytes_per_row(plan: LogicalPlan) -> float:
    fact = plan.spec.source.table
    info = plan.tables[fact]
    features = [f for f in plan.features() if f.table == fact]
    return 8.0 * (len(plan.id_columns) + 2) + sum(value_bytes(info, f) for f in features)


def worth_spreading(plan: LogicalPlan) -> bool:
    return scoring_cost_per_row(plan) > SHUFFLE_FACTOR * fact_bytes_per_row(plan)


def _kernel_cost(kernel: Kernel) -> float:
    strategy = kernel.strategy
    if isinstance(kernel, TreeEnsembleKernel):
        nodes = int(sum(t.n_internal for t in kernel.ir.trees))
        rate = TEST_FLOPS["compiled" if strategy == "compiled" else "numpy"]
        if strategy == "native":
            rate = TEST_FLOPS["native"]
        return float(nodes * rate * FLOP_WEIGHT)
    if isinstance(kernel, LightGBMNativeKernel):  # LightGBM's own predictor
        return kernel.num_trees * NODES_PER_NATIVE_TREE * TEST_FLOPS["native"] * FLOP_WEIGHT
    return 0.0  # affine and opaque models: at the scan's speed (bench/glms.py), never heavy
