"""Writes without a Python transform through Spark's own Parquet writer (sinks/spark_writer.py):
the same table as the data source writes, or the data source writes it."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from batchscore.sinks import write_delta
from batchscore.sinks.maintenance import vacuum
from batchscore.sinks.ownership import STAGING_DIR, check_table_folder, marker_path
from batchscore.sinks.request import FileSizing
from batchscore.sinks.spark_writer import ENV, WRITER

NAN = float("nan")
UTC = dt.UTC
SCHEMA = (
    "id long, s string, d date, b boolean, i int, x double, t timestamp, "
    "dec decimal(10,2), arr array<double>"
)
ROWS = [
    (1, "a/b=c d%", dt.date(2020, 1, 1), True, 3, 1.5, dt.datetime(2020, 1, 1, tzinfo=UTC),
     Decimal("1.25"), [1.0, 2.0]),
    (2, None, dt.date(2020, 1, 2), False, -7, None, None, None, None),
    (3, "é=x:1", None, None, None, NAN,
     dt.datetime(2021, 5, 5, 1, 2, 3, 456789, tzinfo=UTC), Decimal("-2.50"), []),
    (4, "a/b=c d%", dt.date(2020, 1, 1), True, 3, -0.5, None, Decimal("0.00"), [NAN]),
]  # fmt: skip


def _writer(path: Path) -> str:
    facts = DeltaTable(str(path)).history(1)[0]["batchscore"]
    return str((json.loads(facts) if isinstance(facts, str) else facts)["writer"])


def _stats(path: Path, rel: str) -> dict[str, Any]:
    """The add action's `stats` JSON, as written in the log."""
    for entry in sorted((path / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            add = json.loads(line).get("add")
            if add is not None and unquote(add["path"]) == unquote(rel):
                return dict(json.loads(add["stats"]))
    raise AssertionError(rel)


def _table(path: Path) -> tuple[pa.Schema, str]:
    table = DeltaTable(str(path)).to_pyarrow_table().sort_by("id")
    return table.schema, repr(table.to_pylist())  # repr: NaN equals NaN


def _partitions(path: Path) -> list[str]:
    adds = pa.table(DeltaTable(str(path)).get_add_actions(flatten=True)).to_pylist()
    return sorted(repr({k: v for k, v in a.items() if k.startswith("partition")}) for a in adds)


@pytest.mark.spark
@pytest.mark.parametrize("partition_by", [["s"], ["d"], ["b", "i"], []])
def test_spark_writer_writes_the_table_the_data_source_writes(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partition_by: list[str]
) -> None:
    df = spark.createDataFrame(ROWS, SCHEMA)
    written = {}
    for native in ("1", "0"):
        monkeypatch.setenv(ENV, native)
        path = tmp_path / f"native_{native}"
        result = write_delta(df, path, mode="append", partition_by=partition_by)
        assert result.committed and result.rows == len(ROWS)
        written[native] = path
    assert _writer(written["1"]) == WRITER and _writer(written["0"]) == "python"
    assert _table(written["1"]) == _table(written["0"])
    assert _partitions(written["1"]) == _partitions(written["0"])
    native = written["1"]
    adds = pa.table(DeltaTable(str(native)).get_add_actions(flatten=True)).to_pylist()
    for add in adds:
        assert (
            native / marker_path(unquote(add["path"]))
        ).is_file()  # vacuum can tell it is the project's
    assert not (native / STAGING_DIR).exists()


@pytest.mark.spark
def test_a_nan_in_a_spark_written_file_leaves_its_float_column_without_bounds(
    spark: Any, tmp_path: Path
) -> None:
    """Pins what parquet-java does with a NaN (records it as the max): the add action's
    bounds must never let data skipping drop a file holding the NaN row."""
    nan_rows = [("with", float(i) if i != 500 else NAN) for i in range(1000)]
    rows = nan_rows + [("without", float(i)) for i in range(1000)]
    df = spark.createDataFrame(rows, "ds string, f double").repartition(1)
    write_delta(df, tmp_path / "t", mode="append", partition_by=["ds"])
    assert _writer(tmp_path / "t") == WRITER
    adds = pa.table(DeltaTable(str(tmp_path / "t")).get_add_actions(flatten=True)).to_pylist()
    stats = {a["partition.ds"]: _stats(tmp_path / "t", a["path"]) for a in adds}
    assert "f" not in stats["with"]["minValues"] and "f" not in stats["with"]["maxValues"]
    assert stats["without"]["minValues"]["f"] == 0.0
    assert stats["without"]["maxValues"]["f"] == 999.0


@pytest.mark.spark
def test_a_failed_spark_write_commits_nothing_and_leaves_no_file(
    spark: Any, tmp_path: Path
) -> None:
    path = tmp_path / "t"
    good = spark.createDataFrame([(1, "a"), (2, "b")], "id long, ds string")
    write_delta(good, path, mode="append", partition_by=["ds"])
    before = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    version = DeltaTable(str(path)).version()
    bad = spark.range(0, 1000, numPartitions=2).select(
        F.col("id"),
        F.when(F.col("id") == 777, F.raise_error(F.lit("boom"))).otherwise("c").alias("ds"),
    )
    with pytest.raises(Exception, match="boom"):
        write_delta(bad, path, mode="append")
    assert DeltaTable(str(path)).version() == version
    after = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert after == before
    assert not (path / STAGING_DIR).exists()


@pytest.mark.spark
def test_writes_spark_cannot_make_exactly_go_through_the_data_source(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = spark.createDataFrame([(1, 0.5)], "id long, f double")
    sized = FileSizing(max_file_rows=10)
    write_delta(df, tmp_path / "sized", mode="append", sizing=sized)
    monkeypatch.setenv(ENV, "0")
    write_delta(df, tmp_path / "off", mode="append")
    for name in ("sized", "off"):
        assert _writer(tmp_path / name) == "python", name


def test_staging_left_by_a_dead_driver_is_the_projects_and_vacuum_removes_it(
    tmp_path: Path,
) -> None:
    """A driver killed while Spark wrote leaves its staging folder: not foreign to the folder
    check, and vacuum deletes it once older than the retention."""
    from deltalake import write_deltalake

    path = tmp_path / "t"
    staged = path / STAGING_DIR / "abc123" / "ds=1"
    staged.mkdir(parents=True)
    (staged / "part-00000-x.c000.snappy.parquet").write_bytes(b"x")
    (staged.parent / "_SUCCESS").write_bytes(b"")
    check_table_folder(path)  # would raise on a foreign file
    write_deltalake(str(path), pa.table({"id": [1]}))
    assert vacuum(path, retain_hours=1, enforce_retention=False, dry_run=True).files == ()
    old = time.time() - 7200
    for item in [*staged.parent.rglob("*"), staged.parent]:
        os.utime(item, (old, old))
    dry = vacuum(path, retain_hours=1, enforce_retention=False, dry_run=True)
    assert f"{STAGING_DIR}/abc123/ds=1/part-00000-x.c000.snappy.parquet" in dry.files
    assert staged.exists()
    vacuum(path, retain_hours=1, enforce_retention=False)
    assert not (path / STAGING_DIR / "abc123").exists()
