"""File statistics in the Delta log: taken from the Parquet footers, checked against the data."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from batchscore.sinks import SchemaPolicy, write_delta
from batchscore.sinks.file_stats import STATS_STRING_CHARS, indexed_columns

EXTRA = 40


def test_indexed_columns_follow_delta_defaults_and_table_properties() -> None:
    schema = pa.schema(
        [("id", pa.int64()), ("s", pa.struct([("a", pa.int64()), ("b", pa.string())]))]
        + [(f"x{i}", pa.float64()) for i in range(40)]
    )
    default = indexed_columns(schema, {})
    assert default == ("id", "s", *(f"x{i}" for i in range(29)))  # 1 + 2 + 29 leaves = 32
    assert indexed_columns(schema, {"delta.dataSkippingNumIndexedCols": "-1"}) == tuple(
        schema.names
    )
    assert indexed_columns(schema, {"delta.dataSkippingNumIndexedCols": "2"}) == ("id", "s")
    named = {"delta.dataSkippingStatsColumns": "x3, id"}
    assert indexed_columns(schema, named) == ("id", "x3")


def _frame(spark: Any) -> Any:
    long_text = "z" * (STATS_STRING_CHARS + 8)
    when = dt.datetime(2026, 11, 21, 10, 30, 0, 123456, tzinfo=dt.UTC)
    rows = []
    for i in range(60):
        part = "a" if i % 2 == 0 else "b"
        f = float("nan") if (part == "a" and i == 10) else i * 0.5 - 7.0
        text = None if i % 7 == 0 else (long_text if i == 3 else f"t{i:03d}")
        extra = [float(i * j) for j in range(EXTRA)]
        day = dt.date(2026, 1, 1 + i % 28)
        moment = when + dt.timedelta(seconds=i)
        rows.append((part, i, text, f, -float(i), moment, day, i % 3 == 0, [float(i), 1.0], *extra))
    extras = ", ".join(f"x{j} double" for j in range(EXTRA))
    schema = (
        "ds string, id long, s string, f double, g double, ts timestamp, day date, "
        f"b boolean, vec array<double>, {extras}"
    )
    return spark.createDataFrame(rows, schema)


def _adds(path: Path) -> list[dict[str, Any]]:
    adds = []
    for entry in sorted((path / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                adds.append(action["add"])
    return adds


def _has_nan(file: Path) -> bool:
    return bool(pc.any(pc.is_nan(pq.read_table(file).column("f"))).as_py())


def _instant(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def _check_file(path: Path, add: dict[str, Any], indexed: set[str]) -> None:
    stats = json.loads(add["stats"])
    data = pq.read_table(path / add["path"])
    assert stats["numRecords"] == data.num_rows
    assert set(stats["nullCount"]) == indexed - {"vec"}
    for name in stats["nullCount"]:
        assert stats["nullCount"][name] == data.column(name).null_count, name
    for name in ("id", "f", "g", "s", "b", "day", "ts"):
        if name not in indexed:
            assert name not in stats["minValues"]
            continue
        column = data.column(name)
        if name == "f" and _has_nan(path / add["path"]):
            assert "f" not in stats["minValues"]  # a NaN: no bounds that would skip it
            continue
        low, high = pc.min_max(column).values()
        expected_low, expected_high = low.as_py(), high.as_py()
        if name == "ts":
            low_ms, high_ms = (_instant(stats[k]["ts"]) for k in ("minValues", "maxValues"))
            ms = dt.timedelta(milliseconds=1)
            assert expected_low - ms < low_ms <= expected_low  # milliseconds, rounded outward
            assert expected_high <= high_ms < expected_high + ms
            continue
        if name == "day":
            expected_low, expected_high = expected_low.isoformat(), expected_high.isoformat()
        if name == "s" and len(expected_high) > STATS_STRING_CHARS:
            assert "s" not in stats["maxValues"]  # a cut max would not bound the column
            continue
        assert stats["minValues"][name] == expected_low, name
        assert stats["maxValues"][name] == expected_high, name
        if name == "f":
            assert not math.isnan(stats["minValues"]["f"])


@pytest.mark.spark
def test_file_stats_match_the_data_and_follow_the_indexed_columns(
    spark: Any, tmp_path: Path
) -> None:
    df = _frame(spark)
    default = tmp_path / "default"
    write_delta(df, str(default), mode="overwrite", partition_by=["ds"])
    file_schema = pq.read_schema(next(default.rglob("*.parquet")))
    first_32 = set(indexed_columns(file_schema, {}))
    assert "x0" in first_32 and f"x{EXTRA - 1}" not in first_32
    adds = _adds(default)
    assert len(adds) >= 2
    for add in adds:
        _check_file(default, add, first_32)
    with_nan = [a for a in adds if _has_nan(default / a["path"])]
    assert len(with_nan) == 1 and "f" not in json.loads(with_nan[0]["stats"])["minValues"]
    assert any("f" in json.loads(a["stats"])["minValues"] for a in adds)

    # A table that asks for statistics on every column gets them on every column.
    every = tmp_path / "every"
    empty = pa.schema([("ds", pa.string()), ("id", pa.int64())]).empty_table()
    write_deltalake(
        str(every),
        empty,
        partition_by=["ds"],
        configuration={"delta.dataSkippingNumIndexedCols": "-1"},
    )
    write_delta(
        df,
        str(every),
        mode="overwrite",
        partition_by=["ds"],
        schema_policy=SchemaPolicy(overwrite_schema=True),
    )
    for add in _adds(every):
        _check_file(every, add, set(file_schema.names))
