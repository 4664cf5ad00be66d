"""Dimension keys are checked once per dimension snapshot (plan.checked_keys).

A run refuses duplicate dimension keys before scoring, with one small Spark aggregation per
join. A snapshot found unique is remembered in the driver's cache, so the next run over the
same data runs no aggregation; any change to a dimension's data (a Parquet file added or
rewritten, a Delta commit, a Delta table created again) is checked again, and a duplicate it
brings is refused as before.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from batchscore.cli import run_cli
from batchscore.errors import DataError
from batchscore.jobs.run import plan_job
from batchscore.physical.lower import lower_source
from batchscore.plan import checked_keys
from batchscore.plan.nodes import Join, LogicalPlan, Partial
from batchscore.spec import load_spec
from tests.star import build_star

pytestmark = pytest.mark.spark

RUN_DATE = "2026-11-20"


def _plan(spec_path: Path, mode: str = "never") -> LogicalPlan:
    spec = load_spec(spec_path, run_date=RUN_DATE)
    spec = spec.model_copy(update={"planner": spec.planner.model_copy(update={"factorize": mode})})
    return plan_job(spec)


def _check_stages(spark: Any, spec_path: Path, mode: str = "never") -> int:
    """Spark stages that lowering the job's joins ran from physical/lower.py: the key checks
    (Spark's own jobs reading Parquet footers for a schema are not counted)."""
    group = f"key-checks-{uuid.uuid4().hex}"
    context = spark.sparkContext
    context.setJobGroup(group, "dimension key checks")
    try:
        lower_source(spark, _plan(spec_path, mode))
    finally:
        context.setJobGroup("", "")
    tracker = context.statusTracker()
    jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(group)]
    names = [
        getattr(tracker.getStageInfo(s), "name", "") for job in jobs if job for s in job.stageIds
    ]
    return sum("lower.py" in name for name in names)


def _join(plan: LogicalPlan, table: str) -> Join:
    return next(n for n in plan.nodes() if isinstance(n, Join) and n.table == table)


@pytest.fixture()
def star(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BATCHSCORE_CACHE_DIR", str(tmp_path / "cache"))
    built = build_star(tmp_path / "star", seed=4, fact_rows=60, a_rows=6, b_rows=5, c_rows=3,
                       missing=0.1, nan_rate=0.0, mode="never")  # fmt: skip
    return built.spec


def test_a_snapshot_found_unique_is_not_checked_again(spark: Any, star: Path) -> None:
    assert _check_stages(spark, star) > 0
    plan = _plan(star)
    joins = [n for n in plan.nodes() if isinstance(n, Join)]
    assert {p.name for p in checked_keys.checks_dir().iterdir()} == {
        checked_keys.memo_key(plan, j) for j in joins
    }
    assert _check_stages(spark, star) == 0
    assert run_cli(["cache", "info"]) == 0
    assert run_cli(["cache", "clear"]) == 0  # forgets them: the next lowering checks again
    assert not any(checked_keys.checks_dir().iterdir())
    assert _check_stages(spark, star) > 0


def test_a_parquet_dimension_that_changed_is_checked_again(spark: Any, star: Path) -> None:
    assert _check_stages(spark, star) > 0
    folder = star.parent / "dim_b"
    first = pq.read_table(folder / "part-0.parquet")
    pq.write_table(first.slice(0, 1), folder / "part-1.parquet")  # b_id 0 a second time
    with pytest.raises(DataError, match="Dimension table 'dim_b' has 2 rows for key b_id=0"):
        _check_stages(spark, star)


def test_a_delta_dimension_that_changed_is_checked_again(spark: Any, star: Path) -> None:
    assert _check_stages(spark, star) > 0
    table = star.parent / "dim_a"
    rows = DeltaTable(str(table)).to_pyarrow_table()
    write_deltalake(str(table), rows.slice(2, 1), mode="append")  # a_id 2 a second time
    with pytest.raises(DataError, match="Dimension table 'dim_a' has 2 rows for key a_id=2"):
        _check_stages(spark, star)


def test_a_delta_table_created_again_is_another_snapshot(star: Path) -> None:
    """Same path, same rows, same version number: the table's id still tells them apart."""
    before = checked_keys.memo_key(_plan(star), _join(_plan(star), "dim_a"))
    table = star.parent / "dim_a"
    rows = DeltaTable(str(table)).to_pyarrow_table()
    shutil.rmtree(table)
    write_deltalake(str(table), rows)
    after = checked_keys.memo_key(_plan(star), _join(_plan(star), "dim_a"))
    assert before is not None and after is not None and before != after


def test_a_snowflake_dimension_key_reads_its_own_table(star: Path) -> None:
    """dim_c hangs below dim_a: dim_a's rows and keys are its own (dim_c is left-joined on keys
    its own check found unique), so a change to dim_c changes only dim_c's key."""
    plan = _plan(star)
    assert {checked_keys.keyed_scan(j).table for j in plan.nodes() if isinstance(j, Join)} == {
        j.table for j in plan.nodes() if isinstance(j, Join)
    }
    before = {t: checked_keys.memo_key(plan, _join(plan, t)) for t in ("dim_a", "dim_c")}
    folder = star.parent / "dim_c"
    pq.write_table(pa.table({"c_id": [99], "c0": [1.5]}), folder / "part-1.parquet")
    plan = _plan(star)
    after = {t: checked_keys.memo_key(plan, _join(plan, t)) for t in ("dim_a", "dim_c")}
    assert before["dim_a"] == after["dim_a"] and before["dim_c"] != after["dim_c"]


def test_a_duplicate_below_a_snowflake_is_refused_by_its_own_join(spark: Any, star: Path) -> None:
    assert _check_stages(spark, star) > 0
    folder = star.parent / "dim_c"
    first = pq.read_table(folder / "part-0.parquet")
    pq.write_table(first.slice(0, 1), folder / "part-1.parquet")
    with pytest.raises(DataError, match="Dimension table 'dim_c' has 2 rows for key c_id=0"):
        _check_stages(spark, star)


def test_a_factorized_dimension_is_checked_on_its_own_rows_and_remembered(
    spark: Any, star: Path
) -> None:
    """Partial scores keep a dimension's rows and keys: the check reads the dimension's scan
    (no partial scoring in it), and its answer is remembered as for any dimension."""
    plan = _plan(star, mode="always")
    joins = [n for n in plan.nodes() if isinstance(n, Join)]
    assert any(isinstance(j.right, Partial) for j in joins)
    assert all(checked_keys.keyed_scan(j).table == j.table for j in joins)
    assert _check_stages(spark, star, "always") > 0
    assert _check_stages(spark, star, "always") == 0
    table = star.parent / "dim_a"
    rows = DeltaTable(str(table)).to_pyarrow_table()
    write_deltalake(str(table), rows.slice(2, 1), mode="append")  # a_id 2 a second time
    with pytest.raises(DataError, match="Dimension table 'dim_a' has 2 rows for key a_id=2"):
        _check_stages(spark, star, "always")
