"""`batchscore sql-server`: Spark's Thrift JDBC server over Delta tables, queried with pyspark's
own beeline; a new commit shows up without a restart; SIGTERM stops it cleanly.

Every wait is bounded; the server runs in its own process group and is killed if it lingers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyspark
import pytest

import batchscore as bs
from batchscore.sinks.sql_server import wait_for_port
from tests.cluster import free_port, loopback_env

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
BEELINE = Path(pyspark.__file__).resolve().parent / "bin" / "beeline"
DAYS = ["2026-11-19", "2026-11-20"]
QUERY = "SELECT model, count(*) AS n FROM global_temp.preds GROUP BY model ORDER BY model"


def _env() -> dict[str, str]:
    return loopback_env(SPARK_HOME=str(BEELINE.parent.parent))


def _beeline(port: int) -> dict[str, int]:
    done = subprocess.run(
        [str(BEELINE), "-u", f"jdbc:hive2://127.0.0.1:{port}", "--silent=true",
         "--outputformat=csv2", "-e", QUERY],
        env=_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    counts = {}
    for line in done.stdout.splitlines():
        name, sep, n = line.strip().partition(",")
        if sep and n.isdigit():
            counts[name] = int(n)
    return counts


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_sql_server_serves_and_refreshes(spark: Any, demo: Path, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out"))
    conf = root / "conf" / "demo.yaml"
    out = root / "out" / "predictions"
    assert bs.run(conf, run_date=DAYS[0], spark=spark).status == "committed"
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as handle:
        server = subprocess.Popen(
            [sys.executable, "-m", "batchscore", "sql-server", "--table", f"preds={out}",
             "--port", str(port), "--poll-seconds", "1", "--master", "local[1]"],
            cwd=REPO, env=_env(), stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_for_port(port, timeout=180), log.read_text()[-3000:]
        assert server.poll() is None
        url = f"jdbc:hive2://127.0.0.1:{port}"
        assert _wait_for(lambda: url in log.read_text(), 60), log.read_text()[-3000:]
        models = {"basket_class", "return_risk", "revenue_glm"}
        assert _beeline(port) == dict.fromkeys(models, 3_000)
        # A new run date committed by another process is visible without a restart.
        assert bs.run(conf, run_date=DAYS[1], spark=spark).table_version == 1
        assert _wait_for(lambda: "at version 1" in log.read_text(), 60), log.read_text()[-3000:]
        assert _beeline(port) == dict.fromkeys(models, 6_000)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=90) == 0
        assert "sql-server stopped" in log.read_text()
        assert _wait_for(lambda: not wait_for_port(port, timeout=0.5), 30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
