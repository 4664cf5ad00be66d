"""The CLI as a scheduler runs it (fresh processes, exit codes) and spark-submit on a cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from tests.cluster import StandaloneCluster

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m batchscore ARGS` in a fresh process on loopback, with `env` added."""
    environ = dict(
        os.environ,
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    environ.update(env)
    environ.pop("BATCHSCORE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "batchscore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        cwd=REPO,
    )


@pytest.mark.spark
def test_cli_exits_zero_every_time(demo: Path, tmp_path: Path, spark: Any) -> None:
    """delta-rs/pyarrow can abort at interpreter exit (exit 134); the CLI must not inherit that."""
    import batchscore as bs

    root = tmp_path / "job"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out", "wide.yaml"))
    bs.run(root / "conf" / "demo.yaml", run_date="2026-11-21", spark=spark)
    out = str(root / "out" / "predictions")
    for _ in range(6):
        history = _cli("history", out)
        assert history.returncode == 0, history.stderr
        assert "job=retail_daily run_date=2026-11-21" in history.stdout
    explain = _cli("explain", str(root / "conf" / "demo.yaml"), "--run-date", "2026-11-21")
    assert explain.returncode == 0, explain.stderr
    assert "keeps 1 of 3 files" in explain.stdout
    query = _cli(
        "sql",
        "SELECT model, count(*) AS n FROM p GROUP BY model ORDER BY model",
        "--table",
        f"p={out}",
    )
    assert query.returncode == 0, query.stderr
    assert "| basket_class | 3000 |" in query.stdout.replace("  ", " ")
    rerun = _cli("run", str(root / "conf" / "demo.yaml"), "--run-date", "2026-11-21")
    assert rerun.returncode == 0, rerun.stderr
    assert "already committed" in rerun.stdout


@pytest.mark.spark
def test_spark_submit_on_a_standalone_cluster(demo: Path, tmp_path: Path) -> None:
    root = tmp_path / "job"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out", "wide.yaml"))
    cluster = StandaloneCluster(tmp_path / "cluster", cores=2, memory="2g")
    try:
        cluster.start()
        done = cluster.spark_submit(
            str(REPO / "jobs" / "score.py"),
            str(root / "conf" / "demo.yaml"),
            "--run-date",
            "2026-11-20",
        )
    finally:
        cluster.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 9,000 prediction rows" in done.stdout
    table = DeltaTable(str(root / "out" / "predictions"))
    assert table.version() == 0
    assert (
        sum(a for a in table.get_add_actions(flatten=True).column("num_records").to_pylist())
        == 9_000
    )
