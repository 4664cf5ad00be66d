"""The fused write: the Delta writer scores each input batch itself (no mapInArrow pass).

The fused table must equal the one written from the mapInArrow-scored DataFrame, row for row and
type for type; the pickled scoring task must be gone after a commit and after a failed run, a
task file changed on storage must be refused, and vacuum must leave task files alone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

import batchscore as bs
from batchscore.errors import DataError, SinkError
from batchscore.jobs.run import plan_job
from batchscore.physical.lower import lower, lower_for_write
from batchscore.sinks.maintenance import vacuum
from batchscore.sinks.options import SOURCE_NAME
from batchscore.sinks.spark_errors import unwrap_spark_error
from batchscore.sinks.spark_io import write_delta
from batchscore.sinks.transform import (
    TASKS_DIR,
    FusedTransform,
    encode_schema,
    load_transform,
    store_transform,
)
from batchscore.spec.load import with_run_date

pytestmark = pytest.mark.spark

RUN_DATE = "2026-11-21"
SCORED_AT = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def _spec(demo: Path, layout: str) -> Any:
    text = (demo / "conf" / "demo.yaml").read_text().replace("layout: long", f"layout: {layout}")
    path = demo / "conf" / f"fused_{layout}.yaml"
    path.write_text(text)
    return with_run_date(bs.load_spec(path), RUN_DATE)


def _sorted(path: Path, keys: list[str]) -> pa.Table:
    table = pa.table(DeltaTable(str(path)).to_pyarrow_table())
    return table.sort_by([(k, "ascending") for k in keys])


def _task_files(table: Path) -> list[str]:
    folder = table / TASKS_DIR
    assert folder.is_dir(), "the fused write never stored its task file"
    return sorted(os.listdir(folder))


def _assert_same(a: pa.Table, b: pa.Table) -> None:
    assert a.schema == b.schema
    assert a.num_rows == b.num_rows > 0
    for name in a.column_names:
        left, right = a.column(name), b.column(name)
        if pa.types.is_floating(left.type):
            x = np.array(left.to_pylist(), dtype=float)
            y = np.array(right.to_pylist(), dtype=float)
            np.testing.assert_allclose(x, y, rtol=1e-12, equal_nan=True, err_msg=name)
        else:
            assert left.equals(right), name


@pytest.mark.parametrize(
    ("layout", "keys"), [("long", ["sale_id", "model"]), ("wide", ["sale_id"])]
)
def test_fused_write_equals_the_mapinarrow_write(
    spark: Any, demo: Path, tmp_path: Path, layout: str, keys: list[str]
) -> None:
    plan = plan_job(_spec(demo, layout))
    parts = plan.output.partition_by
    scored = lower(spark, plan, run_id="r1", scored_at=SCORED_AT)
    unfused = write_delta(scored, tmp_path / "unfused", mode="append", partition_by=parts)

    joined, task, schema = lower_for_write(spark, plan, run_id="r1", scored_at=SCORED_AT)
    assert "prediction" not in joined.columns  # the input is unscored: scoring is the writer's
    out = tmp_path / "fused"
    fused = write_delta(
        joined, out, mode="append", partition_by=parts, transform=FusedTransform(task, schema)
    )
    assert fused.committed and fused.rows == unfused.rows
    assert DeltaTable(str(out)).metadata().partition_columns == list(parts)
    _assert_same(_sorted(tmp_path / "unfused", keys), _sorted(out, keys))
    assert _task_files(out) == []


def test_failed_fused_run_leaves_no_task_file_and_one_line_error(
    spark: Any, demo: Path, tmp_path: Path
) -> None:
    """A category vector of the wrong width makes the scoring task raise inside the writer."""
    root = tmp_path / "broken"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out", "*.yaml"))
    shutil.copy(demo / "conf" / "demo.yaml", root / "conf" / "demo.yaml")
    products = DeltaTable(str(root / "data" / "products")).to_pyarrow_table()
    vectors = products["category_vec"].to_pylist()
    vectors[-1] = vectors[-1][:-1]
    column = products.schema.get_field_index("category_vec")
    write_deltalake(
        str(root / "data" / "products"),
        products.set_column(column, "category_vec", pa.array(vectors)),
        mode="overwrite",
    )
    with pytest.raises(DataError, match="category_vec") as caught:
        bs.run(root / "conf" / "demo.yaml", run_date=RUN_DATE, spark=spark)
    message = str(caught.value)
    assert "\n" not in message and "BATCHSCORE_ERROR" not in message
    assert caught.value.exit_code == 2
    out = root / "out" / "predictions"
    assert not (out / "_delta_log").exists()
    assert list(out.rglob("*.parquet")) == []
    assert _task_files(out) == []


def test_tampered_task_file_is_refused(spark: Any, demo: Path, tmp_path: Path) -> None:
    plan = plan_job(_spec(demo, "long"))
    # A run id of its own: workers cache loaded tasks by sha256, and an earlier test's task
    # (already checked when it was loaded) would be served without reading this file.
    joined, task, schema = lower_for_write(spark, plan, run_id="tamper", scored_at=SCORED_AT)
    _, other, _ = lower_for_write(spark, plan, run_id="forged", scored_at=SCORED_AT)
    out = tmp_path / "tampered"
    ref = store_transform(str(out), "tamper0000000000", task, schema)
    # Swap in a task that would write well-formed but wrong rows (another run id).
    forged = store_transform(str(tmp_path / "elsewhere"), "forged", other, schema)
    shutil.copy(tmp_path / "elsewhere" / forged.path, out / ref.path)
    options = {
        "path": str(out),
        "partition_by": '["ds"]',
        "transform": ref.path,
        "transform_sha256": ref.sha256,
        "transform_schema": encode_schema(schema),
    }
    with pytest.raises(Exception) as caught:
        joined.write.format(SOURCE_NAME).mode("append").options(**options).save()
    error = unwrap_spark_error(caught.value)
    assert isinstance(error, SinkError), caught.value
    assert "sha256" in str(error) and "refused" in str(error)
    assert not (out / "_delta_log").exists()
    assert list(out.rglob("*.parquet")) == []


def test_task_file_loads_once_and_checks_its_digest(tmp_path: Path) -> None:
    schema = pa.schema([("x", pa.int64())])
    ref = store_transform(str(tmp_path), "w1", _Double(), schema)
    first = load_transform(str(tmp_path), ref)
    assert load_transform(str(tmp_path), ref) is first  # cached per process by sha256
    batch = pa.record_batch({"x": [1, 2]})
    assert [b.column(0).to_pylist() for b in first(iter([batch]))] == [[2, 4]]
    other = store_transform(str(tmp_path), "w2", _Double(3), schema)  # new bytes: not cached
    (tmp_path / other.path).write_bytes((tmp_path / ref.path).read_bytes())
    with pytest.raises(SinkError, match="refused"):
        load_transform(str(tmp_path), other)


def test_vacuum_leaves_task_files_alone(tmp_path: Path) -> None:
    table = tmp_path / "t"
    write_deltalake(str(table), pa.table({"a": [1], "ds": ["x"]}), partition_by=["ds"])
    write_deltalake(str(table), pa.table({"a": [2], "ds": ["x"]}), mode="overwrite")
    ref = store_transform(str(table), "w1", _Double(), pa.schema([("a", pa.int64())]))
    os.utime(table / ref.path, (0, 0))
    result = vacuum(table, retain_hours=0, enforce_retention=False)
    assert result.files  # the overwritten data file went
    assert (table / ref.path).exists()


@dataclass(frozen=True)
class _Double:
    factor: int = 2

    def __call__(self, batches: Any) -> Any:
        for batch in batches:
            yield pa.record_batch({"x": pa.compute.multiply(batch.column(0), self.factor)})
