"""Delta scans through Spark's own Parquet reader == the project's Python reader, row for row."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from batchscore.physical.native_scan import read_delta_native
from batchscore.sinks import read_delta

pytestmark = pytest.mark.spark


def _table(tmp_path: Path, name: str, partition_by: list[str]) -> Path:
    rng = np.random.default_rng(0)
    n = 600
    data = pa.table(
        {
            "ds": pa.array([dt.date(2026, 11, 20 + i % 3) for i in range(n)], pa.date32()),
            "shard": pa.array([i % 4 for i in range(n)], pa.int64()),
            "region": pa.array(["north", "south", "east"][i % 3] for i in range(n)),
            "id": pa.array(range(n), pa.int64()),
            "x": pa.array(rng.normal(size=n)),
            "vec": pa.array([list(rng.normal(size=3)) for _ in range(n)], pa.list_(pa.float64())),
            "ts": pa.array(
                [dt.datetime(2026, 11, 20, 1, i % 60, tzinfo=dt.UTC) for i in range(n)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    path = tmp_path / name
    for chunk in range(3):  # several commits, several files per partition
        part = data.slice(chunk * 200, 200)
        write_deltalake(str(path), part, partition_by=partition_by or None, mode="append")
    return path


def _rows(df: Any) -> list[tuple[Any, ...]]:
    out = [tuple(r) for r in df.collect()]
    return sorted(out, key=lambda r: [str(v) for v in r])


@pytest.mark.parametrize(
    ("partition_by", "filters", "columns"),
    [
        ([], None, None),
        (["ds"], None, None),
        (["ds", "shard"], [("ds", ">=", "2026-11-21")], None),
        (["ds", "shard"], [("shard", "in", ["1", "3"])], ["id", "shard", "vec"]),
        (["region"], [("region", "!=", "east")], ["region", "x", "ts"]),
    ],
)
def test_native_reader_equals_python_reader(
    spark: Any,
    tmp_path: Path,
    partition_by: list[str],
    filters: list[tuple[str, str, Any]] | None,
    columns: list[str] | None,
) -> None:
    path = _table(tmp_path, "t", partition_by)
    native = read_delta_native(
        spark, str(path), version=None, partition_filters=filters, columns=columns
    )
    assert native is not None
    python = read_delta(spark, str(path), partition_filters=filters, columns=columns)
    assert native.schema == python.schema
    assert _rows(native) == _rows(python)
    split = read_delta_native(
        spark, str(path), version=None, partition_filters=filters, columns=columns, split=3
    )
    assert split is not None and split.schema == python.schema
    # every row once, in three copies of each file's scan (one task each, no shuffle)
    assert _rows(split) == _rows(python)
    assert split.rdd.getNumPartitions() == 3 * native.rdd.getNumPartitions()
    physical = split._jdf.queryExecution().executedPlan().toString()
    assert "Exchange" not in physical, physical


def test_time_travel_and_fallbacks(spark: Any, tmp_path: Path, monkeypatch: Any) -> None:
    path = _table(tmp_path, "t", ["ds"])
    old = read_delta_native(spark, str(path), version=0, partition_filters=None, columns=["id"])
    assert old is not None and old.count() == 200
    monkeypatch.setenv("BATCHSCORE_NATIVE_SCAN", "0")
    assert (
        read_delta_native(spark, str(path), version=None, partition_filters=None, columns=None)
        is None
    )
    monkeypatch.delenv("BATCHSCORE_NATIVE_SCAN")
    # partition values that need escaping in folder names: the Python reader reads those
    odd = pa.table({"k": ["a b:c", "d%e"], "v": [1.0, 2.0]})
    write_deltalake(str(tmp_path / "odd"), odd, partition_by=["k"])
    assert (
        read_delta_native(
            spark, str(tmp_path / "odd"), version=None, partition_filters=None, columns=None
        )
        is None
    )
    empty = read_delta_native(
        spark, str(path), version=None, partition_filters=[("ds", "=", "2030-01-01")], columns=None
    )
    assert empty is None  # no file selected: the Python reader gives the empty typed frame


def test_a_table_with_a_metadata_column_is_not_split(spark: Any, tmp_path: Path) -> None:
    """Its `_metadata` column hides the reader's row positions: no split (the caller shuffles),
    while the plain native read still works."""
    write_deltalake(str(tmp_path / "m"), pa.table({"_metadata": [1, 2, 3], "v": [1.0, 2.0, 3.0]}))
    args: dict[str, Any] = {"version": None, "partition_filters": None, "columns": None}
    assert read_delta_native(spark, str(tmp_path / "m"), split=2, **args) is None
    plain = read_delta_native(spark, str(tmp_path / "m"), **args)
    assert plain is not None and plain.count() == 3


def test_the_task_bound_follows_sparks_split_settings(spark: Any) -> None:
    """A file is cut into splits no smaller than min(maxPartitionBytes, openCostInBytes): 4 MB
    by default, so one 3 MB file is surely one task, a 5 MB one may be two."""
    from batchscore.physical.native_scan import surely_fewer_tasks

    mb = 2**20
    assert surely_fewer_tasks(spark, [3 * mb], 2)
    assert not surely_fewer_tasks(spark, [5 * mb], 2)
    assert not surely_fewer_tasks(spark, [mb, mb], 2) and surely_fewer_tasks(spark, [mb, mb], 3)
    key = "spark.sql.files.openCostInBytes"
    before = spark.conf.get(key)
    try:
        spark.conf.set(key, "16m")
        assert surely_fewer_tasks(spark, [5 * mb], 2)
        spark.conf.set(key, "1k")
        assert not surely_fewer_tasks(spark, [5 * mb], 2)
    finally:
        spark.conf.set(key, before)
