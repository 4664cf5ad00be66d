"""Wide projections in one call to Spark keep every column name and value (physical.frames)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from batchscore.physical.frames import project, quoted, renamed
from batchscore.physical.native_scan import read_delta_native
from batchscore.sinks import read_delta

pytestmark = pytest.mark.spark

ODD = ["plain", "with.dot", "with`backtick", "with space", "UPPER"]


def test_any_column_name_is_projected_and_renamed_by_name(spark: Any) -> None:
    df = spark.createDataFrame([(1, 2.5, "x", "y", True)], ODD)
    order = list(reversed(ODD))
    picked = project(df, order)
    assert picked.columns == order
    assert picked.collect()[0].asDict() == df.collect()[0].asDict()
    wide = spark.range(3).selectExpr(*(f"id * {i} AS {quoted(f'c.{i}')}" for i in range(300)))
    named = renamed(wide, [f"t__c{i}" for i in range(300)])
    assert named.columns == [f"t__c{i}" for i in range(300)]
    assert [r["t__c7"] for r in named.orderBy("t__c1").collect()] == [0, 7, 14]


def test_a_delta_table_with_odd_column_names_reads_like_the_python_reader(
    spark: Any, tmp_path: Path
) -> None:
    data = pa.table({name: pa.array([i, i + 1, i + 2]) for i, name in enumerate(ODD)})
    path = tmp_path / "odd"
    write_deltalake(str(path), data, partition_by=["UPPER"])
    columns = ["with space", "UPPER", "with`backtick", "with.dot"]
    native = read_delta_native(
        spark, str(path), version=None, partition_filters=None, columns=columns
    )
    assert native is not None and native.columns == columns
    python = read_delta(spark, str(path), columns=columns)
    assert sorted(map(tuple, native.collect())) == sorted(map(tuple, python.collect()))
