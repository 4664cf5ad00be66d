"""Whether a few-file fact scan is worth spreading over every core before scoring.

A day's partition is often one file with one row group, which Spark reads as one task; every
stage above the scan inherits that, and the scoring task then runs on one core while the others
wait. Spreading lets every core run the scoring task's work (the Arrow transfer, the lookups and
feature assembly, the kernels, the output columns and the Parquet write), in one of two ways:

- split (Spark's own Parquet reader): the scan is read n times, each copy keeping the rows
  whose position in their file is i modulo n (`_metadata.row_index`). No shuffle and no extra
  stage; each task decodes its files whole, and a retried task gets the same rows;
- shuffle (any other reader): the fact rows hash-partitioned over every core, which needs no
  sort and gives a retried task the same rows, at the cost of a second stage.

Measured on this 2-core machine, medians of 5 interleaved runs in one process (session 19,
nothing else running): Walmart (421,570 rows, 40 fact bytes per row) logistic regression + 210
LightGBM trees 1.78 s kept, 1.76 s shuffled, 1.50 s split; the logistic regression alone 1.05,
1.23 and 1.05 s; Flights (66,548 rows, 200 fact bytes per row) logistic regression 0.80, 1.10
and 0.89 s; with its LightGBM too 0.86, 0.97 and 1.00 s. In the cost model's unit (bytes moved;
FLOPs x FLOP_WEIGHT), with the task's work at 40 per fact row plus 25 per model and row, those
figures put the share of it that spreading saves at about a quarter, a re-decoded fact byte at
about 0.19 and the split's fixed cost at about 3.7 million, a shuffled byte at about 0.6 and
the shuffle's stage at about 11.5 million.
"""

from __future__ import annotations

from batchscore.kernels.base import Kernel
from batchscore.kernels.lightgbm_native import LightGBMNativeKernel
from batchscore.kernels.trees.kernel import TreeEnsembleKernel
from batchscore.plan.cost import FLOP_WEIGHT, TEST_FLOPS, fact_rows, fact_scan, value_bytes
from batchscore.plan.nodes import LogicalPlan

MOVED_SHARE = 0.25
"""Share of the task's work over the fact rows that spreading takes off the wall clock. Less
than half even on two cores: one task's JVM side (scan, Arrow encoding) already runs beside its
Python worker, and a lone task's kernels use every core (physical.threads)."""
TASK_ROW_COST = 40.0
"""The scoring task's work per fact row besides the models: Arrow transfer, lookups, ids."""
MODEL_ROW_COST = 25.0
"""Per model and row besides its kernel: feature assembly, output columns, Parquet write."""
SPLIT_READ_FACTOR = 0.19
"""A fact byte that every split task decodes again (each reads its file whole and keeps every
n-th row), in moved bytes."""
SPLIT_COST = 3.65e6
"""The split's fixed cost: n scans of the same files to plan and open instead of one."""
SHUFFLE_FACTOR = 0.6
"""A shuffled fact byte (hash partitioned: written, read back and decoded), in moved bytes."""
STAGE_COST = 11.5e6
"""The shuffle's extra stage (scheduling, shuffle files, a second task set)."""
MAX_SPLIT = 8
"""Most copies of a scan a split makes; more tasks than that take the shuffle (each copy
decodes every row of its files)."""
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


def split_saving(plan: LogicalPlan) -> float:
    """What splitting the fact scan by row position saves (negative: it costs more)."""
    moved = MOVED_SHARE * task_cost_per_row(plan)
    return fact_rows(plan) * (moved - SPLIT_READ_FACTOR * fact_bytes_per_row(plan)) - SPLIT_COST


def shuffle_saving(plan: LogicalPlan) -> float:
    """What shuffling the fact rows over every core saves (negative: it costs more)."""
    moved = MOVED_SHARE * task_cost_per_row(plan)
    return fact_rows(plan) * (moved - SHUFFLE_FACTOR * fact_bytes_per_row(plan)) - STAGE_COST


def fact_file_sizes(plan: LogicalPlan) -> list[int]:
    """Bytes of each file the fact scan reads (after partition pruning), from the planner's
    listing: what bounds the tasks Spark's reader makes of them (physical.native_scan)."""
    scan = fact_scan(plan)
    files = plan.tables[scan.table].select_files(list(scan.partition_filters))
    return [size for _, _, size, _ in files]


def worth_spreading(plan: LogicalPlan) -> bool:
    """Whether either way of spreading pays; the physical layer picks the split where the scan
    is Spark's own Parquet reader and the shuffle elsewhere (physical.lower._spread)."""
    return split_saving(plan) > 0 or shuffle_saving(plan) > 0


def describe_spread(plan: LogicalPlan) -> str:
    split, shuffle = split_saving(plan), shuffle_saving(plan)
    verdict = (
        "spread when read as fewer tasks than cores" if max(split, shuffle) > 0 else ("not spread")
    )
    rows, task, width = fact_rows(plan), task_cost_per_row(plan), fact_bytes_per_row(plan)
    return (
        f"{verdict}: {rows:,} fact rows x {MOVED_SHARE:g} x task work {task:,.0f} "
        f"against {width:,.0f} fact bytes a row; split by row position "
        f"{_verdict(split)}, shuffled {_verdict(shuffle)}"
    )


def _verdict(saving: float) -> str:
    return f"saves {saving / 1e6:,.2f} M" if saving > 0 else f"costs {-saving / 1e6:,.2f} M"


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
