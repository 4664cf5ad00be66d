"""Threads per scoring task: spark.task.cpus, or the cores a stage with few tasks leaves idle.

A day's partition of a small fact table is often one Parquet file with one row group, which
Spark reads as one task: every stage above the scan inherits it, and on a 2-core executor the
scoring then runs on one core while the other waits. Spreading the rows costs a shuffle
(plan.spread decides when scoring is heavy enough to pay for it); when it is not worth it, the
task may still use the idle cores for its kernels (compiled trees split rows over threads,
LightGBM and BLAS take the thread count), which costs nothing to set up.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pyspark.sql import SparkSession

from batchscore.physical.connect import default_parallelism, master

_LOCAL = re.compile(r"local(?:-cluster)?\[(\d+|\*)")


def task_cpus(spark: SparkSession) -> int:
    try:
        return max(1, int(spark.conf.get("spark.task.cpus", "1") or 1))
    except ValueError:
        return 1


def executor_cores(spark: SparkSession) -> int:
    """Cores one task could use on its executor: spark.executor.cores when set, every core Spark
    runs on in local mode, else spark.task.cpus (unknown: nothing beyond the task's share).
    Over Spark Connect the same, from the server's configuration (physical/connect.py). Read
    from the session's configuration, which holds the SparkConf it started with: a copy of the
    whole SparkConf (`sparkContext.getConf()`) took ~15 ms of every run."""
    configured = spark.conf.get("spark.executor.cores", None)
    if configured and configured.isdigit():
        return int(configured)
    if _LOCAL.match(master(spark)):
        return default_parallelism(spark)
    return task_cpus(spark)


def task_threads(spark: SparkSession, stage_tasks: Callable[[], int | None]) -> int:
    """Threads for each task of a stage of `stage_tasks()` tasks (None: as many as cores)."""
    own = task_cpus(spark)
    cores = executor_cores(spark)
    if cores <= own:
        return own
    tasks = stage_tasks()
    slots = default_parallelism(spark)
    if tasks is None or tasks * own >= slots:
        return own
    return max(own, min(cores, slots // max(tasks, 1)))
