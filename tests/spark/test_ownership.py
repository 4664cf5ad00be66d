"""Nothing lost under bad input: tables are created only in folders batchscore owns, and vacuum
deletes only the files batchscore provably wrote.

Real Spark and Delta throughout: jobs run through the CLI in-process on the shared session, and a
run killed before its commit is a real child process killed with SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from batchscore.cli import run_cli
from batchscore.errors import SinkError
from batchscore.sinks.files import TaskWriter
from batchscore.sinks.log import table_version
from batchscore.sinks.maintenance import data_files_on_disk, live_files, orphan_files, vacuum
from batchscore.sinks.ownership import list_markers, marker_path
from batchscore.sinks.request import WritePlan, WriteRequest
from batchscore.sinks.schema import delta_arrow_schema
from batchscore.sinks.spark_errors import unwrap_spark_error
from batchscore.sinks.spark_io import write_delta
from batchscore.sinks.storage import is_delta_table
from tests.cluster import loopback_env
from tests.spark.test_bad_inputs import _edit

pytestmark = pytest.mark.spark

RUN_DATE = "2026-11-21"
REPO = Path(__file__).resolve().parents[2]


def _last_job(spark: Any) -> int:
    """The id of the newest Spark job so far (-1: none): ids only grow."""
    return max(spark.sparkContext.statusTracker().getJobIdsForGroup(None), default=-1)


def _refused(spark: Any, spec: Path, capsys: pytest.CaptureFixture[str], *patterns: str) -> str:
    """Run the job: exit 4, one error line matching every pattern, and no Spark job ran."""
    capsys.readouterr()
    before = _last_job(spark)
    assert run_cli(["run", str(spec), "--run-date", RUN_DATE]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)
    assert _last_job(spark) == before, "a Spark job ran before the refusal"
    return err


def _small(spark: Any, ds: str, start: int = 0, n: int = 20) -> Any:
    return spark.createDataFrame(
        [(start + i, ds, float(i)) for i in range(n)], "id long, ds string, value double"
    )


# --------------------------------------------------------------------------------------------
# 1. tables are only created where batchscore owns the folder


def test_run_into_a_foreign_folder_is_refused(
    spark: Any, job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = job / "out" / "predictions"
    out.mkdir(parents=True)
    (out / "keep.csv").write_text("id,value\n1,precious\n")
    (out / "notes").mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / "notes" / name).write_text(name)
    spec = job / "conf" / "demo.yaml"
    _refused(spark, spec, capsys, re.escape(str(out)), r"keep\.csv", r"notes/a\.txt",
             r"and more", r"not a Delta table and not empty", r"empty or new path")  # fmt: skip
    assert (out / "keep.csv").read_text() == "id,value\n1,precious\n"
    assert sorted(p.name for p in out.iterdir()) == ["keep.csv", "notes"]
    assert not (out / "_delta_log").exists() and not (out / "_batchscore").exists()


def test_write_delta_and_the_data_source_refuse_a_foreign_folder(
    spark: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.csv").write_text("x")
    before = _last_job(spark)
    with pytest.raises(SinkError, match=r"mine is a folder that is not a Delta table.*keep\.csv"):
        write_delta(_small(spark, "a"), folder, mode="append", partition_by=["ds"])
    assert _last_job(spark) == before
    try:
        _small(spark, "a").write.format("batchscore_delta").mode("append").save(str(folder))
    except Exception as exc:
        error = unwrap_spark_error(exc)
        assert isinstance(error, SinkError) and "keep.csv" in str(error), exc
    else:
        raise AssertionError("the data source wrote into a foreign folder")
    assert _last_job(spark) == before
    assert sorted(p.name for p in folder.iterdir()) == ["keep.csv"]
    assert SinkError.exit_code == 4


def test_output_that_is_an_input_table_is_refused(
    spark: Any, job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sales = job / "data" / "sales"
    version = table_version(sales)
    files = sorted(p.name for p in sales.rglob("*"))
    spec = _edit(job, "path: ../out/predictions", "path: ../data/sales")
    _refused(spark, spec, capsys, r"output\.path .*data/sales is input table 'sales'",
             r"empty or new path")  # fmt: skip
    # A folder inside an input table is refused the same way.
    _edit(job, "output:\n  path: ../data/sales", "output:\n  path: ../data/products/predictions")
    _refused(spark, spec, capsys, r"lies inside input table 'products'")
    assert table_version(sales) == version and sorted(p.name for p in sales.rglob("*")) == files
    assert not (job / "data" / "products" / "predictions").exists()


def test_output_through_a_symlink_to_an_input_is_refused(
    spark: Any, job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = job / "out" / "link"
    link.parent.mkdir()
    link.symlink_to(job / "data" / "sales", target_is_directory=True)
    # An absolute path keeps the link in the spec (relative ones are resolved when loading).
    spec = _edit(job, "path: ../out/predictions", f"path: {link}")
    _refused(spark, spec, capsys, re.escape(f"{link} (= {job / 'data' / 'sales'})"),
             r"is input table 'sales'")  # fmt: skip
    _edit(job, f"path: {link}", f"path: {link}/ds=2026-11-21")
    _refused(spark, spec, capsys, r"lies inside input table 'sales'")
    assert table_version(job / "data" / "sales") == 0


def test_quarantine_into_a_foreign_folder_is_refused(
    spark: Any, job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = job / "out" / "held"
    held.mkdir(parents=True)
    (held / "report.xlsx").write_bytes(b"not ours")
    _edit(job, "{table: products, on: {product_id: product_id}}",
          "{table: products, on: {product_id: product_id}, on_missing: quarantine}")  # fmt: skip
    spec = _edit(job, "  mode: overwrite_partitions\n",
                 "  mode: overwrite_partitions\n  quarantine: ../out/held\n")  # fmt: skip
    _refused(spark, spec, capsys, r"output\.quarantine .*out/held is a folder", r"report\.xlsx")
    assert (held / "report.xlsx").read_bytes() == b"not ours"
    assert not (job / "out" / "predictions").exists()
    # Quarantine and predictions in one table: refused too.
    _edit(job, "quarantine: ../out/held", "quarantine: ../out/predictions")
    _refused(spark, spec, capsys, r"output\.quarantine .* is the prediction table output\.path")


def test_an_existing_empty_folder_is_accepted(
    spark: Any, job: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = job / "out" / "predictions"
    out.mkdir(parents=True)
    assert run_cli(["run", str(job / "conf" / "demo.yaml"), "--run-date", RUN_DATE]) == 0
    assert table_version(out) == 0
    assert sorted(set(DeltaTable(str(out)).to_pyarrow_table()["ds"].to_pylist())) == [RUN_DATE]
    # An empty `_batchscore/` left by an aborted first run is batchscore's own.
    again = tmp_path / "again"
    (again / "_batchscore" / "tasks").mkdir(parents=True)
    assert write_delta(_small(spark, "a"), again, mode="append", partition_by=["ds"]).committed


# --------------------------------------------------------------------------------------------
# 2. vacuum deletes only what batchscore wrote

KILLED_WRITE = r"""
import sys, time
import pyarrow as pa
from batchscore.physical.session import get_spark, prepare_environment
from batchscore.sinks.spark_io import write_delta
from batchscore.sinks.transform import FusedTransform

prepare_environment()
spark = get_spark("local[1]", {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1"})


class Stall:
    def __call__(self, batches):
        for _ in batches:
            pass
        # More rows than a row group: the task opens its data file and writes to it ...
        yield pa.record_batch({"x": pa.array(range(300_000), pa.int64())})
        time.sleep(600)  # ... and is killed here, long before any commit


write_delta(spark.range(1).coalesce(1), sys.argv[1], mode="append",
            transform=FusedTransform(Stall(), pa.schema([("x", pa.int64())])))
"""


def _wait_for_data_file(path: Path, process: subprocess.Popen[bytes], timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in path.glob("part-*.snappy.parquet") if p.stat().st_size > 0]
        if found:
            return found[0]
        assert process.poll() is None, "the write ended before it could be killed"
        time.sleep(0.2)
    raise AssertionError(f"no data file appeared under {path} in {timeout:.0f} s")


def test_files_of_a_killed_run_are_the_projects_and_vacuum_removes_them(
    spark: Any, tmp_path: Path
) -> None:
    table = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITE, str(table)],
            cwd=REPO,
            env=loopback_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        dead = _wait_for_data_file(table, process, timeout=240)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=60)
    rel = dead.name
    assert (table / marker_path(rel)).is_file(), log.read_text()[-2000:]
    assert not is_delta_table(table)
    # The killed first run left only batchscore's files: the next run may create the table.
    result = write_delta(spark.createDataFrame([(1,), (2,)], "x long"), table, mode="append")
    assert result.committed and result.version == 0
    assert dead.exists() and rel not in live_files(table)
    dry = vacuum(table, retain_hours=0, enforce_retention=False, dry_run=True)
    assert rel in dry.files and dry.foreign == ()
    assert dead.exists()
    done = vacuum(table, retain_hours=0, enforce_retention=False)
    assert rel in done.files and done.foreign == ()
    assert not dead.exists() and not (table / marker_path(rel)).exists()
    assert orphan_files(table) == set() and data_files_on_disk(table) == live_files(table)
    assert set(list_markers(str(table))) == live_files(table)
    assert sorted(DeltaTable(str(table)).to_pyarrow_table()["x"].to_pylist()) == [1, 2]


def test_files_written_by_the_sinks_writer_without_a_commit_are_vacuumed(
    spark: Any, tmp_path: Path
) -> None:
    table = tmp_path / "t"
    write_delta(_small(spark, "a"), table, mode="append", partition_by=["ds"])
    schema = delta_arrow_schema(
        pa.schema([("id", pa.int64()), ("ds", pa.string()), ("value", pa.float64())]),
        path=str(table),
    )
    request = WriteRequest(
        str(table), "append", partition_by=["ds"], write_id=uuid.uuid4().hex[:16]
    )
    task = TaskWriter(WritePlan(request, schema))
    task.add(pa.record_batch({"id": [1, 2], "ds": ["a", "b"], "value": [0.5, 1.5]}, schema=schema))
    written = [f.path for f in task.finish()]  # a task that finished; its job never committed
    assert len(written) == 2 and all((table / marker_path(p)).is_file() for p in written)
    assert orphan_files(table) == set(written)
    result = vacuum(table, retain_hours=0, enforce_retention=False)
    assert set(result.files) == set(written) and result.foreign == ()
    assert orphan_files(table) == set() and set(list_markers(str(table))) == live_files(table)
    assert not (table / "ds=b").exists()


def test_vacuum_leaves_foreign_files_and_lists_them(
    spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "t"
    write_delta(_small(spark, "a"), table, mode="append", partition_by=["ds"])
    write_delta(_small(spark, "b"), table, mode="append")
    replaced = live_files(table)
    write_delta(_small(spark, "a", 100), table, mode="overwrite_partitions")  # a tombstone
    tombstoned = replaced - live_files(table)
    assert tombstoned
    gone = 1 + len(tombstoned)
    hexes = uuid.uuid4().hex
    foreign = {
        "keep.csv": b"id\n1\n",
        "ds=a/notes.txt": b"mine",
        f"ds=a/part-00000-{uuid.uuid4()}-c000.snappy.parquet": b"spark's",
        f"part-0123456789abcdef-{hexes}.snappy.parquet": b"old name, not in a partition folder",
        f"ds=b/part-my_write-{hexes}.snappy.parquet": b"new name, no marker",
        f"ds=a/extra/part-0123456789abcdef-{hexes}.snappy.parquet": b"too deep",
    }
    legacy = f"ds=b/part-fedcba9876543210-{hexes}.snappy.parquet"  # an old version's dead run
    hidden = {"_scratch/x.txt": b"hidden", ".DS_Store": b"hidden"}
    for rel, data in {**foreign, legacy: b"old", **hidden}.items():
        (table / rel).parent.mkdir(parents=True, exist_ok=True)
        (table / rel).write_bytes(data)
    args = ["vacuum", str(table), "--retain-hours", "0", "--no-enforce-retention"]
    capsys.readouterr()
    assert run_cli([*args, "--dry-run"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    would = lines.index("would delete (batchscore's, unreferenced, older than 0 h):")
    others = lines.index("foreign (unreferenced, not written by batchscore; never deleted):")
    assert sorted(x.strip() for x in lines[would + 1 : others]) == sorted({legacy, *tombstoned})
    assert sorted(x.strip() for x in lines[others + 1 : -1]) == sorted(foreign)
    assert f"would delete {gone} unreferenced file(s)" in lines[-1]
    assert "left 6 foreign file(s) untouched" in lines[-1]
    assert captured.err.startswith("warning: 6 file(s) in") and "ds=a/notes.txt" in captured.err
    assert all((table / rel).exists() for rel in [legacy, *tombstoned])
    assert run_cli(args) == 0
    captured = capsys.readouterr()
    assert (
        f"deleted {gone} unreferenced file(s)" in captured.out
        and "warning: 6 file(s)" in captured.err
    )
    for rel, data in {**foreign, **hidden}.items():
        assert (table / rel).read_bytes() == data, rel
    assert not (table / legacy).exists()
    assert not any((table / rel).exists() for rel in tombstoned)
    # The tombstoned file's marker went with it; live files keep theirs.
    assert set(list_markers(str(table))) == live_files(table)
    assert orphan_files(table) == {r for r in foreign if r.endswith(".parquet")}
    rows = DeltaTable(str(table)).to_pyarrow_table()
    assert rows.num_rows == 40 and sorted(set(rows["ds"].to_pylist())) == ["a", "b"]


def test_young_files_of_the_project_wait_for_the_retention(spark: Any, tmp_path: Path) -> None:
    table = tmp_path / "t"
    write_delta(_small(spark, "a"), table, mode="append", partition_by=["ds"])
    write_delta(_small(spark, "a", 100), table, mode="overwrite_partitions")
    legacy = table / "ds=a" / f"part-0123456789abcdef-{uuid.uuid4().hex}.snappy.parquet"
    legacy.write_bytes(b"x")
    result = vacuum(table, retain_hours=1, enforce_retention=False)
    assert result.files == () and result.foreign == () and legacy.exists()
    old = time.time() - 2 * 3600
    os.utime(legacy, (old, old))
    result = vacuum(table, retain_hours=1, enforce_retention=False)
    assert result.files == ("ds=a/" + legacy.name,) and not legacy.exists()
