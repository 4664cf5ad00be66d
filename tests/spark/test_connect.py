"""The demo job over Spark Connect: `batchscore run --remote` and `bs.run` / `bs.sql` /
`bs.score` with `remote=` against a Connect server on 127.0.0.1 commit and return exactly what
the same calls give on local Spark. Clients run in subprocesses (this process holds the suite's
classic SparkSession); one server serves the whole module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from tests.cluster import REPO, loopback_env
from tests.connect import ConnectServer, scored_rows

RUN_DATE = "2026-11-21"
VOLATILE = ("run_id", "scored_at")
"""Columns that differ between any two runs."""


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """The module's Connect server, starting (its JVM boots while `local` runs)."""
    connect = ConnectServer(tmp_path_factory.mktemp("connect"))
    connect.launch()
    try:
        yield connect
    finally:
        connect.stop()


@pytest.fixture(scope="module")
def server(launched: ConnectServer, local: Path) -> ConnectServer:
    """The Connect server, listening (after the local reference run)."""
    launched.wait()
    return launched


def _copy(demo: Path, root: Path) -> Path:
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out", "wide.yaml"))
    return root


def _rows(path: Path | str) -> list[dict[str, Any]]:
    """A prediction table's rows without the per-run columns, in a fixed order."""
    table = DeltaTable(str(path)).to_pyarrow_table()
    table = table.drop_columns([c for c in VOLATILE if c in table.column_names])
    return sorted(table.to_pylist(), key=lambda r: (r["sale_id"], r["model"]))


@pytest.fixture(scope="module")
def local(demo: Path, tmp_path_factory: pytest.TempPathFactory, spark: Any) -> Path:
    """The demo job run on the suite's local SparkSession: the reference."""
    import batchscore as bs

    root = _copy(demo, tmp_path_factory.mktemp("local") / "job")
    result = bs.run(root / "conf" / "demo.yaml", run_date=RUN_DATE, spark=spark)
    assert result.status == "committed" and result.rows > 0
    return root


def _python(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    env = loopback_env()
    env.pop("BATCHSCORE_DEBUG", None)
    for name in ("BATCHSCORE_REMOTE", "SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def test_cli_run_remote_commits_what_a_local_run_commits(
    server: ConnectServer, local: Path, demo: Path, tmp_path: Path
) -> None:
    root = _copy(demo, tmp_path / "job")
    spec = str(root / "conf" / "demo.yaml")
    args = ("-m", "batchscore", "run", spec, "--run-date", RUN_DATE, "--quiet")
    done = _python(*args, "--remote", server.url)
    assert done.returncode == 0, done.stderr + server.tail()
    assert "prediction rows" in done.stdout
    assert _rows(root / "out" / "predictions") == _rows(local / "out" / "predictions")
    lineage = DeltaTable(str(root / "out" / "predictions")).history(1)[0]
    assert lineage["batchscore.run_date"] == RUN_DATE


def test_api_run_sql_and_score_over_connect_match_local_spark(
    server: ConnectServer, local: Path, demo: Path, tmp_path: Path, spark: Any
) -> None:
    root = _copy(demo, tmp_path / "job")
    out = tmp_path / "answer.json"
    spec = str(root / "conf" / "demo.yaml")
    done = _python("-m", "tests.connect", server.url, spec, RUN_DATE, str(out))
    assert done.returncode == 0, done.stderr[-3000:] + server.tail()
    answer = json.loads(out.read_text())
    assert answer["connect"] == "pyspark.sql.connect.session" and answer["same_session"]
    assert answer["status"] == "committed"
    committed = _rows(answer["output"])
    assert committed == _rows(local / "out" / "predictions")
    models = sorted({r["model"] for r in committed})
    assert answer["counts"] == [[m, answer["rows"] // len(models)] for m in models]
    expected = scored_rows(spark, local, RUN_DATE)
    assert len(expected) > 0
    assert answer["scored"] == [list(r) for r in expected]


def test_sql_server_over_connect_says_why_and_what_to_do() -> None:
    """Refused before connecting: no server needed (nothing listens on port 1)."""
    env = loopback_env(BATCHSCORE_REMOTE="sc://127.0.0.1:1")
    done = subprocess.run(
        [sys.executable, "-m", "batchscore", "sql-server", "--table", "p=/nonexistent"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "Spark Connect client has no driver" in done.stderr
    assert "batchscore sql --remote" in done.stderr
    assert "Traceback" not in done.stderr
