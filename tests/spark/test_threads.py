"""Threads per Python worker follow spark.task.cpus: measured inside the worker, not assumed.

A probe "model" (any object with `predict` is scored opaquely) reports, from inside the Spark
Python worker that scores it, the thread counts of the loaded BLAS and OpenMP pools
(threadpoolctl) and what LightGBM is told (BATCHSCORE_THREADS). With spark.task.cpus = 1 (the
session) every pool is 1; a second local Spark with spark.task.cpus = 2 gives 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[2]


class ThreadProbe:
    """Predicts, for every row, one thread count seen where it runs."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.n_features_in_ = 1

    def predict(self, X: Any) -> np.ndarray:
        import lightgbm  # noqa: F401  (loads LightGBM's OpenMP runtime, as scoring it would)
        from threadpoolctl import threadpool_info

        pools = threadpool_info()
        if self.what == "lightgbm":
            value = int(os.environ.get("BATCHSCORE_THREADS", "-1"))
        else:
            counts = [p["num_threads"] for p in pools if p["user_api"] == self.what]
            value = max(counts) if counts else -1
        return np.full(np.shape(X)[0], float(value))


def measure(spark: Any) -> dict[str, list[float]]:
    import batchscore as bs

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    df = spark.range(0, 64, numPartitions=2).selectExpr("id", "cast(id as double) AS x")
    models = [
        {"name": what, "model": ThreadProbe(what), "features": ["x"], "output": "predict"}
        for what in ("blas", "openmp", "lightgbm")
    ]
    rows = bs.score(df, models=models, id_columns=["id"]).collect()
    out: dict[str, list[float]] = {}
    for row in rows:
        out.setdefault(row["model"], []).append(row["prediction"])
    return {k: sorted(set(v)) for k, v in out.items()}


def test_threads_follow_task_cpus_of_the_session(spark: Any) -> None:
    assert spark.conf.get("spark.task.cpus", "1") == "1"
    seen = measure(spark)
    assert seen["lightgbm"] == [1.0]
    assert seen["blas"] == [1.0]
    assert seen["openmp"] in ([1.0], [-1.0])  # -1: no OpenMP runtime loaded in that worker


def test_two_task_cpus_give_two_threads(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from batchscore.physical.session import get_spark\n"
        "from tests.spark.test_threads import measure\n"
        "spark = get_spark('local[2]', {'spark.task.cpus': '2', 'spark.ui.enabled': 'false'})\n"
        "print('RESULT ' + json.dumps(measure(spark)))\n"
        "spark.stop()\n"
    )
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, done.stderr[-3000:]
    seen = json.loads(line[0][len("RESULT ") :])
    assert seen["lightgbm"] == [2.0]
    assert seen["blas"] == [2.0]
    assert seen["openmp"] in ([2.0], [-1.0])


def test_a_stage_of_fewer_tasks_than_cores_gives_each_task_the_idle_ones(spark: Any) -> None:
    from batchscore.physical.threads import task_threads

    assert task_threads(spark, lambda: 1) == 2  # local[2]: one task, two cores
    assert task_threads(spark, lambda: 2) == 1
    assert task_threads(spark, lambda: None) == 1  # a shuffle decides: the task's own share


def test_a_one_file_fact_table_is_scored_with_both_cores(spark: Any, tmp_path: Path) -> None:
    """The job's scoring task gets 2 threads when its fact scan is one file (one task), 1 when
    it is two files; listing the scan's splits runs no Spark job."""
    from datetime import UTC, datetime

    import joblib
    import pyarrow as pa
    from deltalake import write_deltalake
    from sklearn.linear_model import LinearRegression

    from batchscore.jobs.run import plan_job
    from batchscore.physical.lower import scoring_task
    from batchscore.spec import load_spec

    X = np.arange(20.0).reshape(10, 2)
    joblib.dump(LinearRegression().fit(X, X[:, 0]), tmp_path / "m.joblib")
    digest = hashlib.sha256((tmp_path / "m.joblib").read_bytes()).hexdigest()
    fact = pa.table({"id": np.arange(10), "a": X[:, 0], "b": X[:, 1]})
    write_deltalake(str(tmp_path / "fact"), fact)
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(
        "name: threads\ntables: {fact: {path: fact, format: delta}}\n"
        "source: {table: fact, id_columns: [id]}\n"
        f"models: [{{name: m, path: m.joblib, sha256: {digest}, features: [a, b]}}]\n"
        "output: {path: out}\n"
    )
    now = datetime.now(UTC)
    one = scoring_task(spark, plan_job(load_spec(spec_path)), run_id="r", scored_at=now)
    assert one.threads == 2
    write_deltalake(str(tmp_path / "fact"), fact, mode="append")
    two = scoring_task(spark, plan_job(load_spec(spec_path)), run_id="r", scored_at=now)
    assert two.threads == 1
