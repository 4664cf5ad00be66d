"""Cost estimates the planner decides with, and prints in `explain`.

The unit is bytes moved (scan, join payload, Arrow transfer to Python) plus floating-point work
weighted by FLOP_WEIGHT: on a Spark executor moving a byte through a join and the Arrow bridge
(~10 ns) costs far more than a BLAS multiply-add (~0.5 ns), so a plan that moves fewer bytes wins
unless it multiplies much more. An extra pass over a dimension (one more stage and Python
worker round trip) costs a fixed PASS_BYTES on top, so tiny inputs stay materialized.
Row counts come from Delta statistics or Parquet footers, feature sizes from a sampled
row (sparse vectors count their non-zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from batchscore.plan.catalog import TableInfo, table_file
from batchscore.plan.lookups import may_look_up
from batchscore.plan.nodes import FeatureRef, LogicalPlan, Scan
from batchscore.sinks.storage import filesystem

FLOP_WEIGHT = 0.05
PASS_BYTES = 20e6
TEST_FLOPS = {"compiled": 0.4, "native": 2.0, "numpy": 20.0}
"""One tree node test in FLOP units: LightGBM's C++ predictor visits a node in about a BLAS
multiply-add's time; a vectorised numpy test (gather, compare, NaN and category rules, mask
AND) costs about ten times more per node (bench/kernels.py: native 340k rows/s vs 40k for the
numpy strategies on the same 100 trees); compiled trees (C generated per model) about a fifth
of the native predictor's (bench/kernels.py: 5-6x LightGBM's own predict on 100-500 trees)."""
FOOTERS_READ = 64
LOOKUP_BYTE_WEIGHT = 0.05
"""A byte of a looked-up dimension (plan/lookups.py) gathered by Arrow's `take` in the scoring
task, against one joined in Spark and converted to Arrow: Walmart's two dimensions cost 0.03 s
gathered against 0.7 s through the JVM for the same 233 MB (physical/lookups.py)."""


def table_rows(info: TableInfo, scan: Scan | None = None) -> int:
    """Rows a scan of `info` reads after partition pruning (footers sampled beyond 64 files)."""
    files = info.select_files(list(scan.partition_filters)) if scan else info.files
    known = [f[3] for f in files if f[3] >= 0]
    if len(known) == len(files):
        return sum(known)
    sampled = files[:FOOTERS_READ]
    rows = bytes_ = 0
    for path, _, size, _ in sampled:
        fs, location = filesystem(table_file(info.path, path))
        with fs.open_input_file(location) as handle:
            rows += pq.ParquetFile(handle).metadata.num_rows
        bytes_ += size
    total_bytes = sum(f[2] for f in files)
    return rows if len(sampled) == len(files) else int(rows * total_bytes / max(bytes_, 1))


def moved_bytes(plan: LogicalPlan, table: str, values: float) -> float:
    """Bytes per fact row that materializing dimension `table` moves, as the cost model counts
    them: weighted down when the scoring task looks the dimension up instead of Spark joining
    it (plan/lookups.py)."""
    join = next((j for j in plan.joins() if j.table == table), None)
    if join is not None and may_look_up(plan, join):
        return values * LOOKUP_BYTE_WEIGHT
    return values


def value_bytes(info: TableInfo, feature: FeatureRef) -> float:
    """Bytes one row of the feature carries through a join."""
    if feature.kind == "scalar":
        return 8.0
    if feature.kind == "array":
        return 8.0 * feature.width + 8
    return 12.0 * info.nonzeros(feature.column) + 16


@dataclass(frozen=True)
class JoinCost:
    """Both ways to bring one dimension's share of the affine models to the fact rows."""

    table: str
    fact_rows: int
    dim_rows: int
    feature_values: int
    fact_values: int
    models: int
    decision_columns: int
    materialize_bytes: float
    materialize_flops: float
    factorize_bytes: float
    factorize_flops: float
    joined_anyway: tuple[str, ...] = ()
    """Models outside this decision that read the dimension's features: those features are
    joined whatever is decided here, so they count no bytes on either side."""

    @property
    def materialize(self) -> float:
        return self.materialize_bytes + FLOP_WEIGHT * self.materialize_flops

    @property
    def factorize(self) -> float:
        return self.factorize_bytes + FLOP_WEIGHT * self.factorize_flops

    @property
    def tuple_ratio(self) -> float:
        return self.fact_rows / max(self.dim_rows, 1)

    @property
    def feature_ratio(self) -> float:
        return self.feature_values / max(self.fact_values, 1)

    def describe(self) -> str:
        anyway = (
            f"; features joined anyway for {', '.join(self.joined_anyway)}"
            if self.joined_anyway
            else ""
        )
        return (
            f"tuple ratio {self.tuple_ratio:,.1f} ({self.fact_rows:,} fact / {self.dim_rows:,} "
            f"dimension rows), feature ratio {self.feature_ratio:,.2f} ({self.feature_values:,} "
            f"dimension / {self.fact_values:,} fact inputs); "
            f"materialize: join {_mb(self.materialize_bytes)}, "
            f"{_mflop(self.materialize_flops)}, cost {_mb(self.materialize)}; factorize: join + "
            f"dimension pass {_mb(self.factorize_bytes)}, {_mflop(self.factorize_flops)}, "
            f"cost {_mb(self.factorize)}{anyway}"
        )


def _mb(value: float) -> str:
    return f"{value / 1e6:,.2f} MB"


def _mflop(value: float) -> str:
    return f"{value / 1e6:,.2f} MFLOP"


def fact_scan(plan: LogicalPlan) -> Scan:
    fact = plan.spec.source.table
    return next(s for s in plan.scans() if s.table == fact)


def fact_rows(plan: LogicalPlan) -> int:
    scan = fact_scan(plan)
    return table_rows(plan.tables[scan.table], scan)
