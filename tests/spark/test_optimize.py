"""optimize on a table of many small files: each partition compacted to one file in one
data-change-free commit, the rows unchanged, history showing the optimize commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from batchscore.sinks.log import history, transaction_version
from batchscore.sinks.maintenance import live_files, optimize
from batchscore.sinks.request import AppTransaction
from batchscore.sinks.spark_io import read_delta, write_delta

pytestmark = pytest.mark.spark


def _rows(path: Path) -> list[tuple[Any, ...]]:
    table = pa.table(DeltaTable(str(path)).to_pyarrow_table())
    return sorted(zip(*(table[c].to_pylist() for c in sorted(table.column_names)), strict=True))


def _per_partition(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rel in live_files(path):
        counts[rel.split("/")[0]] = counts.get(rel.split("/")[0], 0) + 1
    return counts


def test_small_files_of_a_partition_become_one(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "t"
    frame = spark.range(0, 400, numPartitions=4).selectExpr(
        "id", "cast(id % 2 as string) as ds", "id * 0.5 as score"
    )
    # Four tasks a run, two runs: four small files in each partition.
    write_delta(frame, path, mode="append", partition_by=["ds"], app=AppTransaction("day1", 1))
    write_delta(frame.selectExpr("id + 400 as id", "ds", "score"), path, mode="append")
    assert _per_partition(path) == {"ds=0": 8, "ds=1": 8}
    before = _rows(path)
    result = optimize(path)
    assert result.committed and (result.files_before, result.files_after) == (16, 2)
    assert _per_partition(path) == {"ds=0": 1, "ds=1": 1}
    assert _rows(path) == before and len(before) == 800
    assert read_delta(spark, path).count() == 800
    newest = history(path)[0]
    assert newest["version"] == result.version_after == 2
    assert newest["operation"] == "OPTIMIZE"
    assert newest["metadata"]["batchscore.maintenance"] == "optimize"
    assert transaction_version(path, "day1") == 1  # idempotency survives the rewrite
    assert not optimize(path).committed  # one file a partition: nothing left to compact
