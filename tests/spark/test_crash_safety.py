"""kill -9 at random points of a run: the table always reads back consistent, vacuum leaves no
orphan file, and a rerun yields exactly the expected rows.

The CLI runs as a subprocess in its own process group against a small copy of the demo; the
whole group (Python driver, JVM, Python workers) gets SIGKILL after a delay drawn over the
measured duration of one run, so kills land before Spark is up, while scoring, around the
commit and after it. Every check reads the table in a fresh subprocess.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import loopback_env

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
DAYS = ["2026-11-20", "2026-11-21"]
ROWS_PER_DAY = 400
MODELS = 3
KILLS = 10
RUN_TIMEOUT = 300

CHECK = r"""
import json, os, sys
from collections import Counter
import pyarrow as pa
from deltalake import DeltaTable
from batchscore.sinks.log import log_commits
from batchscore.sinks.maintenance import vacuum, orphan_files, data_files_on_disk, live_files
path = sys.argv[1]
out = {"exists": os.path.isdir(os.path.join(path, "_delta_log"))}
if out["exists"]:
    table = pa.table(DeltaTable(path).to_pyarrow_table())
    keys = Counter(zip(table["sale_id"].to_pylist(), table["model"].to_pylist()))
    out["version"] = DeltaTable(path).version()
    out["rows"] = table.num_rows
    out["duplicates"] = sum(1 for n in keys.values() if n > 1)
    out["per_ds"] = dict(Counter(table["ds"].to_pylist()))
    run_ids = {}
    for ds, run_id in zip(table["ds"].to_pylist(), table["run_id"].to_pylist()):
        run_ids.setdefault(ds, set()).add(run_id)
    out["run_ids"] = {ds: sorted(ids) for ds, ids in run_ids.items()}
    latest = {}
    for version, info in log_commits(path):
        ds = info.get("batchscore.run_date")
        if ds and ds not in latest:
            latest[ds] = info.get("batchscore.run_id")
    out["committed_run_ids"] = latest
    out["orphans_before"] = len(orphan_files(path))
    vacuum(path, retain_hours=0, enforce_retention=False)
    out["orphans_after"] = sorted(orphan_files(path))
    out["on_disk"] = len(data_files_on_disk(path))
    out["live"] = len(live_files(path))
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)
"""


def _env() -> dict[str, str]:
    return loopback_env()


def _start(*args: str, log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "batchscore", *args],
            cwd=REPO,
            env=_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        handle.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def _check(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _assert_consistent(state: dict[str, Any], where: str) -> None:
    assert state["exists"], where
    assert state["duplicates"] == 0, (where, state)
    for ds, n in state["per_ds"].items():
        assert n == ROWS_PER_DAY * MODELS, (where, ds, state)
        # Exactly the rows of the latest committed run of that date, and nothing else.
        assert state["run_ids"][ds] == [state["committed_run_ids"][ds]], (where, state)
    assert state["orphans_after"] == [], (where, state)
    assert state["on_disk"] == state["live"], (where, state)


def test_kill_minus_nine_at_random_points(tmp_path: Path) -> None:
    from batchscore.datasets.demo import build_demo

    root = tmp_path / "demo"
    conf = root / "conf" / "demo.yaml"
    build_demo(root, conf_path=conf, days=len(DAYS), rows_per_day=ROWS_PER_DAY, seed=3)
    out = root / "out" / "predictions"
    log = tmp_path / "runs.log"

    started = time.monotonic()
    first = _start("run", str(conf), "--run-date", DAYS[0], log=log)
    assert first.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]
    duration = time.monotonic() - started
    _assert_consistent(_check(out), "after the measured run")

    rng = random.Random(20261122)
    # Stratified over [0.05, 1.1] x the measured duration, then shuffled: every phase is hit.
    slots = [(0.05 + 1.05 * (i + rng.random()) / KILLS) * duration for i in range(KILLS)]
    rng.shuffle(slots)
    finished_before_kill = 0
    for i, delay in enumerate(slots):
        day = DAYS[i % len(DAYS)]
        process = _start("run", str(conf), "--run-date", day, "--force", log=log)
        try:
            process.wait(timeout=delay)
            finished_before_kill += 1
        except subprocess.TimeoutExpired:
            pass
        _kill_group(process)
        _assert_consistent(_check(out), f"kill {i} after {delay:.1f} s ({day})")

    rerun = _start("run", str(conf), "--from", DAYS[0], "--to", DAYS[-1], log=log)
    assert rerun.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]
    state = _check(out)
    _assert_consistent(state, "after the rerun")
    assert set(state["per_ds"]) == set(DAYS)
    assert state["rows"] == len(DAYS) * ROWS_PER_DAY * MODELS
    assert finished_before_kill < KILLS  # most kills hit a live run
