"""Whether a few-file fact scan is worth spreading over every core before scoring.

A day's partition is often one file with one row group, which Spark reads as one task; every
stage above the scan inherits that, and the scoring task then runs on one core while the others
wait. Spreading the fact rows (one shuffle of the fact columns, hash-partitioned so that no sort
is needed and a retried task gets the same rows) lets every core run the scoring task's work:
the Arrow transfer, the lookups and feature assembly, the kernels, the output columns and the
Parquet write. It pays when that work per row, half of which moves to another core, outweighs
the shuffle's cost per row, over enough rows to cover the extra stage.

Measured on this 2-core machine with lookup joins, medians of 5 interleaved runs, three A/B
runs (session 16): Walmart (421,570 rows, 40 fact bytes per row) logistic regression + 210
LightGBM trees 2.82 -> 2.18 s spread, 3.11 -> 2.46 s, 3.15 -> 2.43 s; the logistic regression
alone 1.38 -> 1.34 s, 1.59 -> 1.81 s, 1.70 -> 1.71 s (break-even: the model predicts a saving of
3.7 million against 35.5 million with the trees); Flights (66,548 rows) logistic regression
0.78 -> 0.84 s (the extra stage costs more than half its small task saves). In the cost model's
unit (bytes moved; FLOPs x FLOP_WEIGHT), those figures put the task's own work at about 40 per
fact row plus 25 per model and row, a shuffled fact byte at about 0.4 and the extra stage at
about 3.3 million.
"""

from __future__ import annotations

from batchscore.kernels.base import Kernel
from batchscore.kernels.lightgbm_native import LightGBMNativeKernel
from batchscore.kernels.trees.kernel import TreeEnsembleKernel
from batchscore.plan.cost import FLOP_WEIGHT, TEST_FLOPS, fact_rows, value_bytes
from batchscore.plan.nodes import LogicalPlan

SHUFFLE_FACTOR = 0.4
"""A shuffled fact byte (hash partitioned: written, read back and decoded), in moved bytes."""
TASK_ROW_COST = 40.0
"""The scoring task's work per fact row besides the models: Arrow transfer, lookups, ids."""
MODEL_ROW_COST = 25.0
"""Per model and row besides its kernel: feature assembly, output columns, Parquet write."""
STAGE_COST = 3.3e6
"""The extra shuffle stage's fixed cost (scheduling, shuffle files, a second task set)."""
MOVED_SHARE = 0.5
"""Share of the task's work that spreading moves to other cores: at least half of it (the
spread applies only where Spark runs at least two tasks at once)."""
NODES_PER_NATIVE_TREE = 30
"""LightGBM's default 31 leaves, for a native kernel whose IR is not parsed."""


def scoring_cost_per_row(plan: LogicalPlan) -> float:
    """Tree models' node tests, in the cost model's unit; GLMs' kernels count nothing beyond
    MODEL_ROW_COST: a batched GLM pass runs at the speed of the scan and the write."""
    return sum(_kernel_cost(b.model.kernel) for b in plan.models)


def task_cost_per_row(plan: LogicalPlan) -> float:
    """The scoring task's whole work per fact row, in the cost model's unit."""
    return TASK_ROW_COST + MODEL_ROW_COST * len(plan.models) + scoring_cost_per_row(plan)


def fact_bytes_per_row(plan: LogicalPlan) -> float:
    fact = plan.spec.source.table
    info = plan.tables[fact]
    features = [f for f in plan.features() if f.table == fact]
    return 8.0 * (len(plan.id_columns) + 2) + sum(value_bytes(info, f) for f in features)


def spread_saving(plan: LogicalPlan) -> float:
    """What spreading saves over the fact rows (negative: it costs more than it saves)."""
    per_row = MOVED_SHARE * task_cost_per_row(plan) - SHUFFLE_FACTOR * fact_bytes_per_row(plan)
    return fact_rows(plan) * per_row - STAGE_COST


def worth_spreading(plan: LogicalPlan) -> bool:
    return spread_saving(plan) > 0


def describe_spread(plan: LogicalPlan) -> str:
    saving = spread_saving(plan)
    verdict = "spread when read as fewer tasks than cores" if saving > 0 else "not spread"
    return (
        f"{verdict}: {fact_rows(plan):,} fact rows x ({MOVED_SHARE:g} x task work "
        f"{task_cost_per_row(plan):,.0f} - shuffle {SHUFFLE_FACTOR:g} x "
        f"{fact_bytes_per_row(plan):,.0f} bytes) - stage {STAGE_COST / 1e6:,.1f} M = "
        f"{saving / 1e6:,.2f} M saved"
    )


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
    return 0.0  # affine and opaque models: at the scan's speed (bench/glms.py)
