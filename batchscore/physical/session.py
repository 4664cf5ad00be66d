"""SparkSession set-up that works on a laptop, in CI and under spark-submit alike.

Workers must run the driver's interpreter (PYSPARK_PYTHON), or they lack every dependency; and
everything binds to loopback unless a real cluster master is given. A Spark Connect URL
(`remote`, $BATCHSCORE_REMOTE, $SPARK_REMOTE) gives a Connect client session instead
(physical/connect.py).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from batchscore.errors import SpecError, StepError
from batchscore.physical.connect import (
    connect_session,
    endpoint,
    is_connect,
    probe_cause,
    probe_python,
    remote_url,
    session_id,
)

DEFAULT_EXECUTOR_TIMEOUT = 120.0
EXECUTOR_TIMEOUT_ENV = "BATCHSCORE_EXECUTOR_TIMEOUT"
_CHECKED: set[str] = set()
"""Applications whose executors passed `check_executors` (once per SparkContext or Connect
session)."""
_REGISTERED: set[str] = set()
"""Connect sessions the data sources are registered in."""

DEFAULT_CONF: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.python.worker.reuse": "true",
}


def prepare_environment() -> None:
    """Point Spark's Python workers at this interpreter and keep local Spark on loopback."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


def get_spark(
    master: str | None = None,
    conf: dict[str, Any] | None = None,
    *,
    remote: str | None = None,
) -> SparkSession:
    """The active session, or a new one. Under spark-submit the submitted master wins.

    `remote` (else $BATCHSCORE_REMOTE, else $SPARK_REMOTE): a Spark Connect URL
    (`sc://HOST:PORT`); the session is then a Connect client (physical/connect.py)."""
    prepare_environment()
    url = remote_url(remote)
    if url is not None and master is not None:
        raise SpecError(
            f"Both a Spark master ({master}) and a Spark Connect server (sc://{endpoint(url)}) "
            "were given; pass --master or --remote, not both (unset BATCHSCORE_REMOTE / "
            "SPARK_REMOTE to use --master)."
        )
    if url is not None:
        spark = connect_session(url, conf)
        register_sources(spark)
        return spark
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return ensure_sources(active)
    if master is not None:
        check_master_reachable(master)
    builder = SparkSession.builder.appName("batchscore")
    if master is not None:
        builder = builder.master(master)
    elif not _under_submit():
        builder = builder.master("local[*]")
    settings = {**DEFAULT_CONF, **(conf or {})}
    if (master is None and not _under_submit()) or (master or "").startswith(
        ("local", "spark://127.0.0.1")
    ):
        settings.setdefault("spark.driver.host", "127.0.0.1")
        settings.setdefault("spark.driver.bindAddress", "127.0.0.1")
    settings.setdefault("spark.executorEnv.PYSPARK_PYTHON", os.environ["PYSPARK_PYTHON"])
    if not os.environ.get("BATCHSCORE_SPARK_LOG"):
        quiet = f"-Dlog4j2.configurationFile={Path(__file__).with_name('log4j2.properties')}"
        settings.setdefault("spark.driver.extraJavaOptions", quiet)
    for key, value in settings.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    register_sources(spark)
    return spark


def _under_submit() -> bool:
    """spark-submit launches the Python driver with a JVM gateway already running."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def ensure_sources(spark: SparkSession) -> SparkSession:
    """`spark`, with the data sources registered if it is a Connect session the caller made
    (a notebook's) that batchscore has not registered them in yet."""
    if is_connect(spark) and session_id(spark) not in _REGISTERED:
        register_sources(spark)
    return spark


def register_sources(spark: SparkSession) -> None:
    """Register the project's Python data sources once per session. Over Connect the class
    travels by reference: the server's Python workers import it (docs/connect.md)."""
    from batchscore.sinks.source import DeltaDataSource

    spark.dataSource.register(DeltaDataSource)
    if is_connect(spark):
        _REGISTERED.add(session_id(spark))


def check_master_reachable(master: str, *, timeout: float = 5.0) -> None:
    """A standalone master (`spark://h:p[,h2:p2]`) that accepts no connection fails here, in
    seconds, instead of after Spark's own minute of registration retries."""
    if not master.startswith("spark://"):
        return
    reasons = []
    for hostport in master.removeprefix("spark://").split(","):
        host, _, port = hostport.strip().rpartition(":")
        if not host or not port.isdigit():
            raise SpecError(
                f"Spark master {master} is not a valid URL; use spark://HOST:PORT in --master."
            )
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except TimeoutError:
            reasons.append(f"no answer in {timeout:.0f} s")
        except ConnectionRefusedError:
            reasons.append("connection refused")
        except OSError as exc:
            reasons.append(exc.strerror or type(exc).__name__)
    why = "; ".join(dict.fromkeys(reasons))
    raise StepError(f"Spark master {master} is unreachable ({why}); start it or fix --master.")


def executor_timeout(value: float | None = None) -> float:
    """The seconds to wait for executors: the argument, else $BATCHSCORE_EXECUTOR_TIMEOUT,
    else 120."""
    if value is not None:
        seconds = float(value)
    else:
        raw = os.environ.get(EXECUTOR_TIMEOUT_ENV, "").strip()
        try:
            seconds = float(raw) if raw else DEFAULT_EXECUTOR_TIMEOUT
        except ValueError:
            raise SpecError(
                f"{EXECUTOR_TIMEOUT_ENV}={raw!r} is not a number of seconds; set it to e.g. 120."
            ) from None
    if not seconds > 0:
        raise SpecError(
            f"The executor timeout {seconds:g} s must be positive; pass --executor-timeout "
            f"SECONDS (or {EXECUTOR_TIMEOUT_ENV}) > 0."
        )
    return seconds


def check_executors(
    spark: SparkSession, timeout: float | None = None, *, stop: bool = False
) -> None:
    """Before the first real job: executors registered, and a trivial Python task runs on
    them, within `timeout` seconds (executor_timeout). Otherwise StepError (exit 1) naming the
    master URL or the setting to fix, instead of a job that waits forever (a master without
    workers, or without the cores/memory asked) or fails with a Java stack (executors whose
    Python cannot start). Checked once per SparkContext or Connect session (there: one Python
    task, physical/connect.py). `stop`: stop the session on failure (the caller created it)."""
    seconds = executor_timeout(timeout)
    key = _checked_key(spark)
    if key in _CHECKED:
        return
    try:
        if is_connect(spark):
            probe_python(spark, seconds)
        else:
            _wait_for_executors(spark, seconds)
            _run_python_probe(spark, seconds)
    except StepError:
        if stop:
            try:
                spark.stop()
            except Exception:
                pass
        raise
    _CHECKED.add(key)


def _checked_key(spark: SparkSession) -> str:
    """Which application a check holds for: a SparkContext, or a Connect session (each client
    session checks once: the server's workers may have changed since another's check)."""
    if is_connect(spark):
        return f"connect:{session_id(spark)}"
    sc = spark.sparkContext
    return f"{sc.applicationId}:{id(sc)}"


def _wait_for_executors(spark: SparkSession, seconds: float) -> None:
    sc = spark.sparkContext
    master = str(sc.master)
    if master.startswith("local"):
        return
    jsc = sc._jsc.sc()
    deadline = time.monotonic() + seconds
    while True:
        if jsc.isStopped():
            raise StepError(
                f"Spark master {master} stopped this application before any executor "
                "registered (it is unreachable, or it refused the application: see its log); "
                "start it or fix --master."
            )
        if int(jsc.getExecutorMemoryStatus().size()) > 1:  # the driver counts as one
            return
        if time.monotonic() >= deadline:
            conf = spark.sparkContext.getConf()
            memory = conf.get("spark.executor.memory", "1g")
            cores = conf.get("spark.executor.cores", "all free cores of a worker")
            raise StepError(
                f"Spark master {master} gave this job no executor in {seconds:g} s: no worker "
                f"is registered with it, or none has the free resources asked "
                f"(spark.executor.memory={memory}, spark.executor.cores={cores}); start a "
                "worker, lower those settings, or raise --executor-timeout."
            )
        time.sleep(0.25)


def _probe(_: object) -> int:
    import batchscore._version  # noqa: F401  (the executors' Python must have batchscore)

    return 1


def _run_python_probe(spark: SparkSession, seconds: float) -> None:
    """Run one trivial Python task; cancel it after `seconds` from a timer thread."""
    sc = spark.sparkContext
    group = f"batchscore-probe-{uuid.uuid4().hex[:8]}"
    timer = threading.Timer(seconds, lambda: sc.cancelJobGroup(group))
    timer.daemon = True
    python = sc.getConf().get(
        "spark.pyspark.python",
        sc.getConf().get("spark.executorEnv.PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", "")),
    )
    sc.setJobGroup(group, "batchscore: executors can run Python", interruptOnCancel=True)
    timer.start()
    try:
        sc.parallelize([0], 1).map(_probe).collect()
    except Exception as exc:
        text = str(exc)
        if "cancelled" in text.lower() or not timer.is_alive():
            raise StepError(
                f"Executors of Spark master {sc.master} did not run a trivial Python task in "
                f"{seconds:g} s (PYSPARK_PYTHON={python}); they may die at start or be too "
                "small: check the workers' logs, PYSPARK_PYTHON and spark.executor.memory, or "
                "raise --executor-timeout."
            ) from None
        first = probe_cause(text)
        raise StepError(
            f"Executors of Spark master {sc.master} cannot run Python with "
            f"PYSPARK_PYTHON={python} ({first}); set PYSPARK_PYTHON (or "
            "spark.pyspark.python) to a Python that has batchscore installed on every worker."
        ) from None
    finally:
        timer.cancel()
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        sc.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
