"""The typed write request: validated once, carried through the data source's string options
unchanged, and enough (as a WritePlan) for the file writer and the commit without Spark."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from batchscore.errors import SinkError
from batchscore.sinks.checkpoints import CHECKPOINT_INTERVAL, checkpoint_if_due
from batchscore.sinks.commit import commit_files
from batchscore.sinks.files import TaskWriter
from batchscore.sinks.log import log_commits, transaction_version
from batchscore.sinks.request import (
    AppTransaction,
    FileSizing,
    WritePlan,
    WriteRequest,
)
from batchscore.sinks.schema import SchemaPolicy, delta_arrow_schema
from batchscore.sinks.transform import FusedTransform, TransformRef, task_path

SCHEMA = pa.schema([("id", pa.int64()), ("ds", pa.string()), ("score", pa.float64())])


def test_an_unknown_mode_is_refused_in_one_place_with_one_message(tmp_path: Path) -> None:
    expected = (
        rf"Delta table {tmp_path}/t: unknown write mode 'apend'; use one of append, "
        r"overwrite_partitions, overwrite\. Did you mean 'append'\?"
    )
    with pytest.raises(SinkError, match=expected):
        WriteRequest(str(tmp_path / "t"), "apend")  # type: ignore[arg-type]
    options = {"path": str(tmp_path / "t"), "mode": " APEND "}
    with pytest.raises(SinkError, match=expected):
        WriteRequest.from_options(options, default_mode="append")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "append", "app": AppTransaction("job", -1)}, "app_version must be >= 0, got -1"),
        (
            {"mode": "append", "schema_policy": SchemaPolicy(overwrite_schema=True)},
            "overwrite_schema=True needs mode='overwrite'",
        ),
        ({"mode": "append", "metadata": {"batchscore": 1}}, "key 'batchscore' is reserved"),
        ({"mode": "append", "metadata": {"x": float("nan")}}, "is not JSON-serializable"),
        ({"mode": "append", "write_id": "a/b"}, "write_id='a/b' is not 1 to 64 letters"),
        ({"mode": "append", "sizing": FileSizing(max_file_rows=0)}, "max_file_rows=0 is not a"),
    ],
)
def test_a_bad_request_is_refused_when_made(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(SinkError, match=message):
        WriteRequest(str(tmp_path / "t"), **fields)  # type: ignore[arg-type]


def test_the_options_carry_the_request_unchanged(tmp_path: Path) -> None:
    ref = TransformRef(task_path("w1"), "ab" * 32, SCHEMA)
    request = WriteRequest(
        str(tmp_path / "t"),
        "overwrite",
        partition_by=["ds"],
        app=AppTransaction("job:2026-11-21", 3),
        metadata={"run": "r1", "nested": {"a": [1, 2]}},
        schema_policy=SchemaPolicy(overwrite_schema=True),
        read_version=7,
        transform=ref,
        sizing=FileSizing(max_file_rows=10, max_file_bytes=1000, row_group_rows=5),
        write_id="w1",
    )
    options = request.to_options()
    assert all(isinstance(v, str) for v in options.values())
    assert WriteRequest.from_options(options, default_mode="append") == request
    plain = WriteRequest(str(tmp_path / "t"), "append")
    assert WriteRequest.from_options(plain.to_options(), default_mode="overwrite") == plain


def test_hand_written_options_still_parse(tmp_path: Path) -> None:
    options = {"path": str(tmp_path / "t"), "partition_by": "ds, day", "app_id": "job"}
    with pytest.raises(SinkError, match="options app_id and app_version go together"):
        WriteRequest.from_options(options, default_mode="append")
    request = WriteRequest.from_options({**options, "app_version": "5"}, default_mode="overwrite")
    assert request.mode == "overwrite" and request.partition_by == ("ds", "day")
    assert request.app == AppTransaction("job", 5) and request.sizing == FileSizing()


def test_a_fused_transform_is_stored_before_it_becomes_options(tmp_path: Path) -> None:
    request = WriteRequest(str(tmp_path), "append", transform=FusedTransform(iter, SCHEMA))
    with pytest.raises(ValueError, match="store the fused transform first"):
        request.to_options()


def test_files_and_commit_work_from_a_plan_without_spark(tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    request = WriteRequest(
        path,
        "append",
        partition_by=["ds"],
        app=AppTransaction("job", 1),
        metadata={"run": "r1"},
        sizing=FileSizing(max_file_rows=2),
        write_id="w1",
    )
    plan = WritePlan(request, delta_arrow_schema(SCHEMA, path=path))
    task = TaskWriter(plan)
    batch = pa.record_batch(
        {"id": [1, 2, 3, 4], "ds": ["a", "a", "a", "b"], "score": [0.5, 1.5, 2.5, 3.5]},
        schema=SCHEMA,
    )
    task.add(batch)
    files = task.finish()
    assert sorted(f.rows for f in files) == [1, 1, 2]  # ds=a split at 2 rows a file
    assert commit_files(plan, files) == 0
    table = DeltaTable(path)
    assert sorted(table.to_pyarrow_table()["id"].to_pylist()) == [1, 2, 3, 4]
    assert transaction_version(path, "job") == 1
    info = log_commits(path)[0][1]
    assert info["run"] == "r1"
    assert info["batchscore"] == {
        "write_id": "w1",
        "mode": "append",
        "files": 3,
        "rows": 4,
        "read_version": -1,
        "writer": "python",
    }
    again = dataclasses.replace(plan, request=dataclasses.replace(request, write_id="w2"))
    task = TaskWriter(again)
    task.add(batch)
    assert commit_files(again, task.finish()) is None  # the app transaction is done
    assert len(log_commits(path)) == 1


def test_every_tenth_commit_writes_a_checkpoint_and_reads_start_there(tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    schema = delta_arrow_schema(SCHEMA, path=path)
    batch = pa.record_batch({"id": [1], "ds": ["a"], "score": [0.5]}, schema=SCHEMA)
    log = tmp_path / "t" / "_delta_log"
    for version in range(CHECKPOINT_INTERVAL + 1):
        request = WriteRequest(path, "append", partition_by=["ds"], write_id=f"w{version}")
        task = TaskWriter(WritePlan(request, schema))
        task.add(batch)
        assert commit_files(task.plan, task.finish()) == version
        checkpoints = sorted(p.name for p in log.glob("*.checkpoint.parquet"))
        due = [f"{CHECKPOINT_INTERVAL:020d}.checkpoint.parquet"]
        assert checkpoints == (due if version >= CHECKPOINT_INTERVAL else []), version
    # a reader needs only the checkpoint and the commits after it
    for old in range(CHECKPOINT_INTERVAL):
        (log / f"{old:020d}.json").unlink()
    table = DeltaTable(path)
    assert table.version() == CHECKPOINT_INTERVAL
    assert table.to_pyarrow_table()["id"].to_pylist() == [1] * (CHECKPOINT_INTERVAL + 1)


def test_a_table_with_its_own_interval_is_left_to_it(tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    data = pa.table({"id": [1], "ds": ["a"], "score": [0.5]}, schema=SCHEMA)
    write_deltalake(path, data, configuration={"delta.checkpointInterval": "1000"})
    for _ in range(CHECKPOINT_INTERVAL):
        write_deltalake(path, data, mode="append")
    assert not checkpoint_if_due(path, CHECKPOINT_INTERVAL)
    assert not list((tmp_path / "t" / "_delta_log").glob("*.checkpoint.parquet"))
