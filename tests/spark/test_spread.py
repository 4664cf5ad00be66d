"""Spreading a one-file fact scan (physical.lower._spread, plan.spread): the scoring stage runs
as one task per core, over copies of the scan split by row position (Spark's own reader) or
over hash-partitioned fact rows (other readers), and scores what the unspread job scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import batchscore as bs
import batchscore.physical.lower as lower
from batchscore.jobs.run import plan_job, run_job
from batchscore.physical.connect import default_parallelism
from batchscore.physical.lower import SPREAD_ENV, lower_source
from tests.spark.test_factorize import _check_against_models, _predictions, _variant
from tests.star import build_star

pytestmark = pytest.mark.spark
DAY = "2026-11-21"


@pytest.mark.parametrize(
    "way", ["split", "split after counting tasks", "shuffle", "shuffle: Python reader"]
)
def test_a_spread_scan_scores_what_the_unspread_one_scores(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    star = build_star(tmp_path, seed=5, fact_rows=400, a_rows=12, b_rows=9, c_rows=4,
                      missing=0.2, nan_rate=0.05)  # fmt: skip
    # 200 rows: too few to pay; the split is taken wherever the reader allows it
    monkeypatch.setattr(lower, "worth_spreading", lambda plan: True)
    monkeypatch.setattr(lower, "split_saving", lambda plan: 1.0 if way != "shuffle" else -1.0)
    monkeypatch.setattr(lower, "shuffle_saving", lambda plan: 1.0)
    if way == "shuffle: Python reader":
        monkeypatch.setenv("BATCHSCORE_NATIVE_SCAN", "0")
    if way == "split after counting tasks":  # files not surely few: Spark's plan is asked
        monkeypatch.setattr(lower, "surely_fewer_tasks", lambda spark, sizes, tasks: False)
    outputs = {}
    for name, switch in (("spread", "1"), ("kept", "0")):
        monkeypatch.setenv(SPREAD_ENV, switch)
        spec = bs.load_spec(_variant(star, name, "never"), run_date=DAY)
        source = lower_source(spark, plan_job(spec), check_keys=False)
        physical = source._jdf.queryExecution().executedPlan().toString()
        shuffles = "Exchange" in physical.replace("BroadcastExchange", "")
        if switch == "0":
            assert not shuffles, physical
        elif way.startswith("split"):
            assert not shuffles and "metadata_row_index" in physical, physical
            assert source.rdd.getNumPartitions() == default_parallelism(spark)
        else:
            # hashed on the fact columns: no sort before the shuffle, as round robin needs
            assert "hashpartitioning(" in physical and "RoundRobin" not in physical, physical
            assert source.rdd.getNumPartitions() == default_parallelism(spark)
        run_job(spec, spark=spark, rules=())
        outputs[name] = _predictions(tmp_path / f"out_{name}")
        _check_against_models(star, outputs[name])
    for model, spread in outputs["spread"].items():
        _assert_same_scores(spread, outputs["kept"][model])


def _assert_same_scores(spread: pa.Table, kept: pa.Table) -> None:
    """Labels and ids exactly; scores to 1e-12, since BLAS sums a row's terms in an order that
    depends on the batch's shape, and spreading changes which rows share a batch."""
    for name in spread.column_names:
        if name in ("run_id", "scored_at"):
            continue
        kind = spread.schema.field(name).type
        if pa.types.is_list(kind):
            kind = kind.value_type
        got, want = spread[name].to_pylist(), kept[name].to_pylist()
        if not pa.types.is_floating(kind):
            assert got == want, name
            continue
        assert [v is None for v in got] == [v is None for v in want], name
        present = [[v for v in values if v is not None] for values in (got, want)]
        np.testing.assert_allclose(*np.array(present, dtype=float), rtol=1e-12)
