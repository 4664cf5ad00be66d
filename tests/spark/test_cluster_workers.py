"""Failures a cluster has: an executor JVM killed mid-scoring, a task that fails once.

Both runs must commit every row exactly once (checked against each model's own predictions on
features joined in numpy) and say in the run summary how many task attempts failed; the
number is checked against an independent witness (Spark's event log) where there is one.
The cluster is a standalone master and two 1-core workers on 127.0.0.1 (tests/cluster.py);
every process started here is stopped in `finally`, every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from batchscore.datasets.demo import MODEL_FILES, materialize_demo
from batchscore.physical.task_failures import FAIL_ONCE_ENV
from tests.cluster import GATE_ENV, REPO, GatedModel, StandaloneCluster, gate_pids
from tests.spark.test_cli_and_cluster import _cli

RUN_DATE = "2026-11-21"
ROWS = 3_000
"""The demo fixture's rows per day; the job writes one row per (sale, model)."""
pytestmark = pytest.mark.spark


# ---------------------------------------------------------------- the job and its exact output


def split_day(root: Path, run_date: str, files: int) -> None:
    """Rewrite the demo's sales table so `run_date`'s rows lie in `files` files (one append
    each): the scoring stage then has several tasks to spread over the executors."""
    path = str(root / "data" / "sales")
    table = DeltaTable(path).to_pyarrow_table()
    day = pc.equal(table["ds"], run_date)
    write_deltalake(path, table.filter(pc.invert(day)), mode="overwrite", partition_by=["ds"])
    rows = table.filter(day)
    for chunk in np.array_split(np.arange(rows.num_rows), files):
        write_deltalake(path, rows.take(pa.array(chunk)), mode="append", partition_by=["ds"])


def gate_basket_model(root: Path) -> None:
    """Point the spec's basket_class at a GatedModel around the same estimator."""
    path = root / "models" / "basket_class_gated.joblib"
    joblib.dump(GatedModel(joblib.load(root / "models" / MODEL_FILES["basket_class"])), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = root / "conf" / "demo.yaml"
    text, n = re.subn(
        r"basket_class\.joblib\n(\s+)sha256: \"?[0-9a-f]{64}\"?",
        f"basket_class_gated.joblib\n\\1sha256: {digest}",
        spec.read_text(),
    )
    assert n == 1
    spec.write_text(text)


def _column(rows: pa.Table, name: str) -> np.ndarray:
    """A prediction (n, 1) or probability (n, k) column as floats, NaN where null."""
    values = rows.column(name).to_pylist()
    width = max((len(v) for v in values if isinstance(v, list)), default=1)
    out = np.full((len(values), width), np.nan)
    for i, value in enumerate(values):
        if value is not None:
            out[i] = value
    return out


def _own(root: Path, model: str, run_date: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(sale ids, the model's own output, the column holding it), NaN where the linear models
    lack a dimension row (the engine writes null there)."""
    X, sale_id = materialize_demo(root, model, run_date=run_date)
    path = root / "models" / MODEL_FILES[model]
    if path.suffix == ".txt":
        return sale_id, lgb.Booster(model_file=str(path)).predict(X)[:, None], "prediction"
    estimator = joblib.load(path)
    complete = ~np.isnan(X).any(axis=1)
    proba = model == "basket_class"
    width = len(estimator.classes_) if proba else 1
    own = np.full((len(X), width), np.nan)
    scored = estimator.predict_proba(X[complete]) if proba else estimator.predict(X[complete])
    own[complete] = scored.reshape(-1, width)
    return sale_id, own, "probability" if proba else "prediction"


def assert_exact(root: Path, run_date: str) -> pa.Table:
    """Every (sale, model) of the day exactly once, with the model's own output."""
    out = root / "out" / "predictions"
    table = DeltaTable(str(out)).to_pyarrow_table()
    table = table.filter(pc.equal(table["ds"], run_date))
    assert table.num_rows == ROWS * len(MODEL_FILES)
    for model in MODEL_FILES:
        rows = table.filter(pc.equal(table["model"], model)).sort_by("sale_id")
        sale_id, own, column = _own(root, model, run_date)
        np.testing.assert_array_equal(rows["sale_id"].to_numpy(), sale_id)  # once each
        np.testing.assert_allclose(_column(rows, column), own, rtol=1e-9, equal_nan=True)
    return table


def data_files(table: Path) -> set[str]:
    """Parquet files under the table folder, outside `_`-folders (what a file lister sees)."""
    return {
        str(p.relative_to(table))
        for p in table.rglob("*.parquet")
        if not any(part.startswith("_") for part in p.relative_to(table).parts)
    }


def committed_files(table: Path) -> set[str]:
    return set(DeltaTable(str(table)).get_add_actions(flatten=True).column("path").to_pylist())


# ---------------------------------------------------------------- Spark's event log


def event_log(folder: Path) -> list[dict[str, Any]]:
    """The application's events, from Spark 4's rolling event log (`eventlog_v2_<app>/`)."""
    files = sorted(folder.glob("eventlog_v2_*/events_*"), key=lambda p: int(p.name.split("_")[1]))
    assert files, list(folder.rglob("*"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line]


def failed_in_log(events: list[dict[str, Any]]) -> int:
    """Task ends that are neither a success nor a kill: what Spark's status store counts as
    failed (AppStatusListener)."""
    return sum(
        1
        for e in events
        if e["Event"] == "SparkListenerTaskEnd"
        and e["Task End Reason"]["Reason"] not in ("Success", "TaskKilled", "TaskCommitDenied")
    )


def scoring_task_ends(events: list[dict[str, Any]], tasks: int) -> list[tuple[str, str]]:
    """(executor id, end reason) of every task attempt of the stage with `tasks` tasks (the
    scoring write: the job's other stages have one or two)."""
    stages = {
        e["Stage Info"]["Stage ID"]
        for e in events
        if e["Event"] == "SparkListenerStageSubmitted"
        and e["Stage Info"]["Number of Tasks"] == tasks
    }
    return [
        (e["Task Info"]["Executor ID"], e["Task End Reason"]["Reason"])
        for e in events
        if e["Event"] == "SparkListenerTaskEnd" and e["Stage ID"] in stages
    ]


# ---------------------------------------------------------------- the tests


def test_executor_killed_mid_scoring_every_row_once_failures_counted(
    job: Path, tmp_path: Path
) -> None:
    tasks = 6
    split_day(job, RUN_DATE, tasks)
    gate_basket_model(job)
    gate, events = tmp_path / "gate", tmp_path / "events"
    gate.mkdir()
    events.mkdir()
    summary = tmp_path / "summary.json"
    cluster = StandaloneCluster(
        tmp_path / "cluster", cores=1, memory="1g", workers=2, worker_env={"PYTHONPATH": None}
    )
    command = cluster.submit_command(
        *("--conf", "spark.executor.cores=1", "--conf", f"spark.sql.files.minPartitionNum={tasks}"),
        *("--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}"),
        *("--conf", "spark.eventLog.compress=false"),
        *("--conf", f"spark.executorEnv.{GATE_ENV}={gate}"),
        *("--conf", f"spark.executorEnv.PYTHONPATH={REPO}"),  # GatedModel's module
        str(REPO / "jobs" / "score.py"),
        *(str(job / "conf" / "demo.yaml"), "--run-date", RUN_DATE),
        *("--summary-json", str(summary)),
    )
    log = tmp_path / "submit.log"
    submit: subprocess.Popen[bytes] | None = None
    try:
        cluster.start()
        with open(log, "wb") as out:
            submit = subprocess.Popen(
                command,
                env={**cluster.env(), "PYTHONPATH": str(REPO)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        held = _wait_for_both_workers(cluster, gate, submit, log)
        (victim,) = (psutil.Process(pid) for pid in cluster.workers[0].executor_pids())
        victim.send_signal(signal.SIGKILL)  # the executor JVM of worker 0, mid-scoring
        victim.wait(timeout=30)
        (gate / "open").touch()
        assert submit.wait(timeout=420) == 0, log.read_text(errors="replace")[-4000:]
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait(timeout=30)
        (gate / "open").touch()
        cluster.stop()

    body = json.loads(summary.read_text())
    assert body["status"] == "committed" and body["rows"] == ROWS * len(MODEL_FILES)
    history = event_log(events)
    failed = failed_in_log(history)
    assert failed >= 1 and body["failed_tasks"] == failed, (failed, body["failed_tasks"])
    output = log.read_text(errors="replace")
    assert f"task retries: {failed} failed attempt" in output
    ends = scoring_task_ends(history, tasks)
    assert len({executor for executor, _ in ends}) >= 2, ends  # scored on both workers
    assert sorted(r for _, r in ends if r != "Success") == ["ExecutorLostFailure"] * failed
    assert sum(r == "Success" for _, r in ends) == tasks
    assert len(held) >= 2
    assert_exact(job, RUN_DATE)
    out = job / "out" / "predictions"
    assert data_files(out) == committed_files(out)  # nothing of the lost attempt is left


def _wait_for_both_workers(
    cluster: StandaloneCluster, gate: Path, submit: subprocess.Popen[bytes], log: Path
) -> set[int]:
    """Block until scoring tasks wait at the gate on both workers; their Python pids."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        held = gate_pids(gate)
        where = {w.index for w in cluster.workers for pid in held if w.runs(pid)}
        if where == {0, 1}:
            return held
        if submit.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(
        f"scoring tasks did not reach the gate on both workers (seen: {gate_pids(gate)}):\n"
        + log.read_text(errors="replace")[-4000:]
    )


def test_a_task_that_fails_once_is_retried_exactly_and_counted(job: Path, tmp_path: Path) -> None:
    split_day(job, RUN_DATE, 4)
    marker = tmp_path / "fail-once"
    marker.mkdir()
    summary = tmp_path / "summary.json"
    done = _cli(
        *("run", str(job / "conf" / "demo.yaml"), "--run-date", RUN_DATE),
        *("--master", "local[2,2]", "--summary-json", str(summary)),  # 2 attempts per task
        **{FAIL_ONCE_ENV: str(marker)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    body = json.loads(summary.read_text())
    assert body["failed_tasks"] == 1
    assert re.search(r"task retries: 1 failed attempt(?!s)", done.stdout), done.stdout
    assert [p.name for p in marker.iterdir()] == [f"{body['run_id']}.failed"]
    table = assert_exact(job, RUN_DATE)
    glm = table.filter(pc.equal(table["model"], "revenue_glm")).column("prediction")
    assert body["null_predictions"]["revenue_glm"] == {"missing dimension row": glm.null_count}
    out = job / "out" / "predictions"
    assert data_files(out) == committed_files(out)  # the failed attempt left no file behind
