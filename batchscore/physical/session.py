"""SparkSession set-up that works on a laptop, in CI and under spark-submit alike.

Workers must run the driver's interpreter (PYSPARK_PYTHON), or they lack every dependency; and
everything binds to loopback unless a real cluster master is given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

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


def get_spark(master: str | None = None, conf: dict[str, Any] | None = None) -> SparkSession:
    """The active session, or a new one. Under spark-submit the submitted master wins."""
    prepare_environment()
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
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


def register_sources(spark: SparkSession) -> None:
    """Register the project's Python data sources once per session."""
    from batchscore.sinks.delta_source import DeltaDataSource

    spark.dataSource.register(DeltaDataSource)
