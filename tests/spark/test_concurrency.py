"""Writers racing on one prediction table: an overwrite of a partition that another writer
changed after this write read the table fails with CommitConflictError (exit code 4) and
leaves no trace; writes to other partitions, and appends, commit; idempotent writers of the
same app transaction commit once. Real delta-rs commits; real Spark where marked."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchscore.errors import CommitConflictError
from batchscore.sinks.commit import FileAdd, commit_files
from batchscore.sinks.log import log_commits, table_version
from batchscore.sinks.maintenance import data_files_on_disk, live_files, optimize
from batchscore.sinks.request import AppTransaction, WritePlan, WriteRequest
from batchscore.sinks.spark_io import read_delta, write_delta
from batchscore.sinks.storage import written_files
from tests.cluster import REPO, loopback_env

SCHEMA = pa.schema([("x", pa.int64()), ("ds", pa.string())])


def _file(root: Path, write_id: str, ds: str, values: list[int]) -> FileAdd:
    rel = f"ds={ds}/part-{write_id}-{uuid.uuid4().hex}.snappy.parquet"
    (root / f"ds={ds}").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": values}), root / rel)
    stats = json.dumps({"numRecords": len(values), "nullCount": {"x": 0}})
    size = (root / rel).stat().st_size
    return FileAdd(rel, size, {"ds": ds}, int(time.time() * 1000), stats, len(values))


def _commit(root: Path, write_id: str, ds: str, values: list[int], **kwargs: Any) -> int | None:
    fields = {"mode": "overwrite_partitions", **kwargs}
    request = WriteRequest(str(root), partition_by=["ds"], write_id=write_id, **fields)
    return commit_files(WritePlan(request, SCHEMA), [_file(root, write_id, ds, values)])


def _rows(root: Path) -> list[tuple[str, int]]:
    table = pa.table(DeltaTable(str(root)).to_pyarrow_table())
    return sorted(zip(table["ds"].to_pylist(), table["x"].to_pylist(), strict=True))


def _race(jobs: dict[str, Any]) -> dict[str, Any]:
    """Run the callables at once (after a barrier); their results or exceptions."""
    barrier = threading.Barrier(len(jobs))
    outcomes: dict[str, Any] = {}

    def go(name: str) -> None:
        barrier.wait(timeout=60)
        try:
            outcomes[name] = jobs[name]()
        except Exception as exc:  # recorded, asserted by the caller
            outcomes[name] = exc

    threads = [threading.Thread(target=go, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def test_stale_overwrite_of_a_partition_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _commit(root, "w0", "a", [1, 2], mode="append")
    _commit(root, "w1", "b", [3], mode="append")
    assert _commit(root, "winner", "a", [10, 20], read_version=1) == 2
    on_disk = data_files_on_disk(root)
    # A write that read version 1, before the winner replaced ds=a: refused, no trace left.
    with pytest.raises(CommitConflictError) as lost:
        _commit(root, "loser", "a", [99], read_version=1)
    message = str(lost.value)
    assert str(root) in message and "partition ds=a" in message and "version 2" in message
    assert "write winner" in message and "Rerun the job" in message
    assert CommitConflictError.exit_code == 4
    assert written_files(str(root), "loser") == [] and data_files_on_disk(root) == on_disk
    assert table_version(root) == 2
    assert _rows(root) == [("a", 10), ("a", 20), ("b", 3)]
    # The same stale read version is fine for another partition, and for appends.
    assert _commit(root, "other", "c", [5], read_version=1) == 3
    assert _commit(root, "late", "a", [30], read_version=1, mode="append") == 4
    # A data-change-free commit (optimize) after the read is no conflict either.
    _commit(root, "w5", "b", [4], mode="append")
    assert optimize(root).committed
    version = table_version(root)
    assert version is not None
    assert _commit(root, "after", "b", [7], read_version=version - 1) == version + 1
    assert _rows(root) == [("a", 10), ("a", 20), ("a", 30), ("b", 7), ("c", 5)]
    # A whole-table overwrite conflicts with any data change since its read.
    with pytest.raises(CommitConflictError, match="partition ds=b"):
        _commit(root, "all", "z", [0], read_version=version - 1, mode="overwrite")


def test_threads_racing_on_one_partition(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _commit(root, "w0", "a", [0], mode="append")
    initial = data_files_on_disk(root)
    # Overwrites of one partition, all read at version 0: exactly one commits.
    outcomes = _race({f"o{i}": (lambda i=i: _commit(root, f"o{i}", "a", [i], read_version=0))
                      for i in range(4)})  # fmt: skip
    winners = [k for k, v in outcomes.items() if isinstance(v, int)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(v, CommitConflictError) for k, v in outcomes.items() if k != winners[0])
    assert _rows(root) == [("a", int(winners[0][1:]))]
    assert data_files_on_disk(root) == live_files(root) | initial  # the losers' files are gone
    # Overwrites of distinct partitions from the same stale version: all commit (retried).
    outcomes = _race({p: (lambda p=p: _commit(root, f"d{p}", p, [7], read_version=0))
                      for p in "bcde"})  # fmt: skip
    assert all(isinstance(v, int) for v in outcomes.values()), outcomes
    # Appends of the same app transaction (one run date, started twice): one commit.
    outcomes = _race({f"s{i}": (lambda i=i: _commit(root, f"s{i}", "f", [i], mode="append",
                                                    app=AppTransaction("job:f", 1)))
                      for i in range(4)})  # fmt: skip
    assert sorted(v is None for v in outcomes.values()) == [False, True, True, True], outcomes
    # Appends of different run dates to one partition: all commit.
    outcomes = _race({f"g{i}": (lambda i=i: _commit(root, f"g{i}", "g", [i], mode="append",
                                                    app=AppTransaction(f"job:{i}", 1)))
                      for i in range(4)})  # fmt: skip
    assert all(isinstance(v, int) for v in outcomes.values()), outcomes
    rows = _rows(root)
    assert len([x for ds, x in rows if ds == "f"]) == 1
    assert sorted(x for ds, x in rows if ds == "g") == [0, 1, 2, 3]
    assert len(log_commits(str(root))) == 1 + 1 + 4 + 1 + 4


@pytest.mark.spark
def test_write_delta_refuses_a_stale_overwrite(spark: Any, tmp_path: Path) -> None:
    """The read version travels through Spark's data source to the commit."""
    path = tmp_path / "t"

    def frame(ds: str, tag: str, n: int = 30) -> Any:
        rows = [(i, ds, tag) for i in range(n)]
        return spark.createDataFrame(rows, "id long, ds string, tag string")

    write_delta(frame("a", "base"), path, mode="append", partition_by=["ds"])
    winner = write_delta(frame("a", "win"), path, mode="overwrite_partitions", read_version=0)
    assert winner.committed and winner.version == 1
    on_disk = data_files_on_disk(path)
    with pytest.raises(CommitConflictError, match=r"partition ds=a was changed by version 1"):
        write_delta(frame("a", "lose"), path, mode="overwrite_partitions", read_version=0)
    assert data_files_on_disk(path) == on_disk and table_version(path) == 1
    other = write_delta(frame("b", "other"), path, mode="overwrite_partitions", read_version=0)
    assert other.committed and other.version == 2
    got = read_delta(spark, path).toPandas()
    assert sorted(got.groupby(["ds", "tag"]).size().items()) == [(("a", "win"), 30),
                                                                 (("b", "other"), 30)]  # fmt: skip


CHILD = """
import json, os, sys, time
from batchscore.errors import BatchScoreError
from batchscore.physical.session import get_spark
from batchscore.sinks.spark_io import write_delta
path, tag, ready = sys.argv[1:4]
spark = get_spark("local[1]", {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1"})
df = spark.createDataFrame([(i, "a", tag) for i in range(50)], "id long, ds string, tag string")
df.count()
open(os.path.join(ready, tag), "w").close()
deadline = time.monotonic() + 120
while len(os.listdir(ready)) < 2 and time.monotonic() < deadline:
    time.sleep(0.02)
try:
    result = write_delta(df, path, mode="overwrite_partitions")
    out, code = {"tag": tag, "version": result.version}, 0
except BatchScoreError as exc:
    out, code = {"tag": tag, "error": type(exc).__name__, "message": str(exc)}, exc.exit_code
print(json.dumps(out), flush=True)
spark.stop()
os._exit(code)
"""


@pytest.mark.spark
def test_two_processes_overwrite_one_partition(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "t"
    base = spark.createDataFrame([(0, "a", "base")], "id long, ds string, tag string")
    write_delta(base, path, mode="append", partition_by=["ds"])
    initial = data_files_on_disk(path)
    ready = tmp_path / "ready"
    ready.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), tag, str(ready)],
            cwd=REPO,
            env=loopback_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for tag in ("p", "q")
    ]
    results = []
    for child in children:
        stdout, _ = child.communicate(timeout=240)
        lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
        results.append((child.returncode, json.loads(lines[-1])))
    codes = sorted(code for code, _ in results)
    assert codes == [0, 4], results
    lost = next(out for code, out in results if code == 4)
    won = next(out for code, out in results if code == 0)
    assert lost["error"] == "CommitConflictError" and "partition ds=a" in lost["message"]
    assert won["version"] == 1 and table_version(path) == 1
    got = read_delta(spark, path).toPandas()
    assert len(got) == 50 and set(got.tag) == {won["tag"]} and got.id.nunique() == 50
    assert data_files_on_disk(path) == live_files(path) | initial  # the loser's files are gone
