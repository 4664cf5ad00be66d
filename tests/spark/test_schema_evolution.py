"""Wide-layout schema evolution: a model added to a spec adds its columns only when the spec
opts in (output.evolve_schema), a model removed leaves its columns null in new rows, and a
column's type never changes in place. Real Spark and delta-rs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

import batchscore as bs
from batchscore.cli import run_cli
from batchscore.errors import SinkError
from batchscore.jobs.progress import without_stage_lines
from batchscore.sinks import SchemaPolicy
from batchscore.sinks.log import history, table_version
from batchscore.sinks.spark_io import read_delta, write_delta

pytestmark = pytest.mark.spark

DAYS = ["2026-11-19", "2026-11-20", "2026-11-21"]
RISK = [
    "return_risk__prediction",
    "return_risk__label",
    "return_risk__probability",
    "return_risk__served",
]


def _base(spark: Any, ds: str, n: int = 20) -> Any:
    return spark.createDataFrame(
        [(i, ds, float(i)) for i in range(n)], "id long, ds string, a__prediction double"
    )


def test_new_columns_need_the_opt_in_then_old_rows_read_null(spark: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    path = tmp_path / "t"
    write_delta(_base(spark, "d1"), path, mode="append", partition_by=["ds"])
    wider = _base(spark, "d2").withColumn("b__prediction", F.col("a__prediction") * 2)
    with pytest.raises(SinkError) as refused:
        write_delta(wider, path, mode="overwrite_partitions")
    message = str(refused.value)
    assert "new column 'b__prediction' (double)" in message and str(path) in message
    assert "output.evolve_schema: true" in message
    assert table_version(path) == 0

    result = write_delta(
        wider,
        path,
        mode="overwrite_partitions",
        schema_policy=SchemaPolicy(evolve_schema=True),
        metadata={"run": "r2"},
    )
    assert result.committed and result.rows == 20
    back = read_delta(spark, path)
    assert back.columns == ["id", "ds", "a__prediction", "b__prediction"]
    rows = {(r.ds, r.id): r.b__prediction for r in back.collect()}
    assert len(rows) == 40
    assert all(v is None for (ds, _), v in rows.items() if ds == "d1")
    assert all(v == 2.0 * i for (ds, i), v in rows.items() if ds == "d2")
    # The schema change is its own metadata-only commit, right before the data commit.
    commits = history(path)
    assert [c["version"] for c in commits] == [2, 1, 0] and result.version == 2
    assert commits[1]["metadata"]["batchscore.schema_evolution"] == {"added": ["b__prediction"]}
    assert commits[1]["metadata"]["run"] == "r2"
    # A type change is still refused, opt-in or not, naming the column.
    changed = wider.withColumn("a__prediction", F.col("a__prediction").cast("string"))
    with pytest.raises(SinkError, match="column 'a__prediction' changes type from double"):
        write_delta(changed, path, mode="append", schema_policy=SchemaPolicy(evolve_schema=True))
    assert table_version(path) == 2


def test_missing_columns_are_filled_only_when_allowed(spark: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    path = tmp_path / "t"
    wide = _base(spark, "d1").withColumn("b__prediction", F.lit(1.5))
    write_delta(wide, path, mode="append", partition_by=["ds"])
    narrow = _base(spark, "d2")
    with pytest.raises(SinkError, match=r"column 'b__prediction' \(double\) is missing"):
        write_delta(narrow, path, mode="append")
    only_models = SchemaPolicy(fill_missing=lambda name: name.endswith("__prediction"))
    # Id and partition columns are never filled with nulls.
    with pytest.raises(SinkError, match=r"column 'id' \(long\) is missing"):
        write_delta(narrow.drop("id"), path, mode="append", schema_policy=only_models)
    result = write_delta(narrow, path, mode="append", schema_policy=only_models)
    assert result.committed and table_version(path) == 1
    rows = {(r.ds, r.id): r.b__prediction for r in read_delta(spark, path).collect()}
    assert len(rows) == 40
    assert {v for (ds, _), v in rows.items() if ds == "d1"} == {1.5}
    assert {v for (ds, _), v in rows.items() if ds == "d2"} == {None}


def _spec(root: Path, name: str, *, drop_risk: bool, evolve: bool) -> Path:
    text = (root / "conf" / "demo.yaml").read_text()
    text = text.replace("layout: long", "layout: wide")
    if drop_risk:
        text = re.sub(r"- name: return_risk\n(  .*\n)+", "", text)
    if evolve:
        text = text.replace("  mode: overwrite_partitions\n", "  mode: overwrite_partitions\n"
                            "  evolve_schema: true\n")  # fmt: skip
    path = root / "conf" / name
    path.write_text(text)
    return path


def _day(table: pa.Table, ds: str) -> pa.Table:
    return table.filter(pc.equal(table["ds"], ds))


def _rows(table: pa.Table, ds: str, *, without: list[str] | None = None) -> list[Any]:
    day = _day(table, ds).drop_columns(without or []).sort_by("sale_id")
    return day.select(sorted(day.column_names)).to_pylist()


def test_wide_spec_gains_and_loses_a_model(
    spark: Any, demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "demo"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out"))
    out = root / "out" / "predictions"
    two = _spec(root, "two.yaml", drop_risk=True, evolve=False)
    three = _spec(root, "three.yaml", drop_risk=False, evolve=False)
    three_evolving = _spec(root, "three_evolving.yaml", drop_risk=False, evolve=True)

    assert bs.run(two, run_date=DAYS[0], spark=spark).status == "committed"
    first = _rows(pa.table(DeltaTable(str(out)).to_pyarrow_table()), DAYS[0])
    # A model added without the opt-in: exit 4, one line naming the new columns and the fix.
    capsys.readouterr()
    assert run_cli(["run", str(three), "--run-date", DAYS[1]]) == 4
    err = without_stage_lines(capsys.readouterr().err).strip()
    assert len(err.splitlines()) == 1, err
    assert all(f"new column '{c}'" in err for c in RISK) and "evolve_schema: true" in err
    assert table_version(out) == 0

    added = bs.run(three_evolving, run_date=DAYS[1], spark=spark)
    assert added.status == "committed" and added.rows == 3_000
    table = pa.table(DeltaTable(str(out)).to_pyarrow_table())
    assert set(RISK) <= set(table.column_names)
    old, new = _day(table, DAYS[0]), _day(table, DAYS[1])
    assert old.num_rows == new.num_rows == 3_000
    assert all(old[c].null_count == 3_000 for c in RISK)  # old rows: nulls in the new columns
    assert new["return_risk__probability"].null_count == 0
    assert _rows(table, DAYS[0], without=RISK) == first  # old rows otherwise untouched
    second = _rows(table, DAYS[1])

    # The model removed again: not refused, the columns stay, new rows get nulls there and
    # the rows scored with it keep their values.
    removed = bs.run(two, run_date=DAYS[2], spark=spark)
    assert removed.status == "committed"
    table = pa.table(DeltaTable(str(out)).to_pyarrow_table())
    assert set(RISK) <= set(table.column_names) and table.num_rows == 9_000
    assert all(_day(table, DAYS[2])[c].null_count == 3_000 for c in RISK)
    assert _rows(table, DAYS[1]) == second
    assert _day(table, DAYS[2])["revenue_glm__prediction"].null_count < 3_000
