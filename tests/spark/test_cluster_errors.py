"""Cluster errors a person can act on: bounded waits, one line naming the master or setting.

Each case runs the real CLI in a fresh process (as a scheduler does) against a master that does
not exist, a master without workers, and a worker whose executors cannot start Python. Every
server started here is stopped in `finally`, every subprocess has a timeout.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.cluster import StandaloneCluster, free_port
from tests.spark.test_cli_and_cluster import _cli

REPO = Path(__file__).resolve().parents[2]
RUN_DATE = "2026-11-21"
pytestmark = pytest.mark.spark


def _job(demo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "job"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out", "wide.yaml"))
    return root


def _one_line(stderr: str) -> str:
    """The one error line (the JVM's own start-up banner may precede it: not ours)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr[-3000:]
    return lines[0]


def test_unreachable_master_fails_fast(demo: Path, tmp_path: Path) -> None:
    root = _job(demo, tmp_path)
    master = f"spark://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    done = _cli("run", str(root / "conf" / "demo.yaml"), "--run-date", RUN_DATE,
                "--master", master, "--executor-timeout", "10")  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    line = _one_line(done.stderr)
    assert f"Spark master {master} is unreachable (connection refused)" in line, line
    assert "fix --master" in line
    assert time.monotonic() - start < 60
    assert not (root / "out").exists()


def test_master_without_workers_then_workers_without_python(demo: Path, tmp_path: Path) -> None:
    root = _job(demo, tmp_path)
    cluster = StandaloneCluster(tmp_path / "cluster", cores=1, memory="1g")
    spec = str(root / "conf" / "demo.yaml")
    try:
        cluster.start_master(timeout=60)
        start = time.monotonic()
        done = _cli("run", spec, "--run-date", RUN_DATE, "--master", cluster.url,
                    "--executor-timeout", "10")  # fmt: skip
        took = time.monotonic() - start
        assert done.returncode == 1, done.stderr[-3000:]
        line = _one_line(done.stderr)
        assert f"Spark master {cluster.url} gave this job no executor in 10 s" in line, line
        assert "start a worker" in line and "--executor-timeout" in line
        assert took < 90, took
        assert not (root / "out").exists()

        cluster.start_worker(timeout=60)
        done = _cli("run", spec, "--run-date", RUN_DATE, "--master", cluster.url,
                    "--executor-timeout", "60", PYSPARK_PYTHON="/nonexistent/python")  # fmt: skip
        assert done.returncode == 1, done.stderr[-3000:]
        line = _one_line(done.stderr)
        assert "PYSPARK_PYTHON=/nonexistent/python" in line, line
        assert cluster.url in line
        assert not (root / "out").exists()
    finally:
        cluster.stop()


def test_executor_timeout_must_be_a_number(demo: Path, tmp_path: Path) -> None:
    root = _job(demo, tmp_path)
    done = _cli("run", str(root / "conf" / "demo.yaml"), "--run-date", RUN_DATE,
                "--master", "spark://127.0.0.1:1", BATCHSCORE_EXECUTOR_TIMEOUT="soon")  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_line(done.stderr)
    assert "BATCHSCORE_EXECUTOR_TIMEOUT='soon' is not a number" in line, line
