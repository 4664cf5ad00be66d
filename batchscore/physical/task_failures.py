"""Failed task attempts of a run: counted on the driver, and a test hook that makes one.

Spark retries a failed task attempt (an executor lost with its JVM, a worker that died, an
error in the task) up to `spark.task.maxFailures` times (4 on a cluster; a local master
`local[N,F]` allows F attempts, plain `local[N]` one). A run that recovered commits exactly
the rows it would have committed anyway (the writer keeps one file set per partition and
sweeps the rest), so nothing in the table shows the retries: the run summary does.

`RunJobs` tags every Spark job the run starts with `batchscore-run-<run id>` (a job tag, added
to the caller's own tags, so a job group a notebook set is left alone) and afterwards reads,
per tagged job, `numFailedTasks` from Spark's status store: the job-level count adds up every
failed attempt of every stage attempt, stages resubmitted after a lost executor's shuffle
output included (the public `StatusTracker.getStageInfo` only shows a stage's last attempt,
so it undercounts exactly the runs that lost an executor). The listener bus is drained first:
the store is fed asynchronously, and a job that just returned may not be in it yet. Where the
session has no SparkContext (Spark Connect) or the store cannot be read, the count is None
(unknown), never a guess.

`fail_once` is a test hook, see its docstring.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

from pyspark.sql import SparkSession

from batchscore.errors import StepError

TAG_PREFIX = "batchscore-run-"
DRAIN_MS = 10_000
"""How long to wait for Spark's listener bus to deliver the run's events to the store."""
FAIL_ONCE_ENV = "BATCHSCORE_TEST_FAIL_ONCE"


class RunJobs:
    """`with RunJobs(session, run_id) as jobs:` tags the Spark jobs started inside the block
    (on this thread, as Spark's job tags are); `jobs.failed_attempts()` counts their failed
    task attempts, after the block or inside it."""

    def __init__(self, session: SparkSession, run_id: str) -> None:
        self.tag = f"{TAG_PREFIX}{run_id}"
        self._context: Any = _spark_context(session)

    def __enter__(self) -> RunJobs:
        if self._context is not None:
            try:
                self._context.addJobTag(self.tag)
            except Exception:  # an old or remote context: count nothing rather than fail
                self._context = None
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._context is not None:
            try:
                self._context.removeJobTag(self.tag)
            except Exception:  # a context stopped inside the block: nothing left to untag
                pass

    def failed_attempts(self) -> int | None:
        """Failed task attempts of the tagged jobs; None when Spark cannot tell."""
        if self._context is None:
            return None
        try:
            return failed_attempts(self._context, self.tag)
        except Exception:  # py4j errors from a stopped context or a changed private API
            return None


def _spark_context(session: SparkSession) -> Any:
    """The session's SparkContext; None over Spark Connect, which has none."""
    try:
        return session.sparkContext
    except Exception:
        return None


def failed_attempts(context: Any, tag: str) -> int:
    """Sum of `numFailedTasks` over the jobs carrying `tag`, once the store has their events."""
    jvm_context = context._jsc.sc()
    try:
        jvm_context.listenerBus().waitUntilEmpty(DRAIN_MS)
    except Exception:  # a timeout: count what the store has so far
        pass
    store = jvm_context.statusStore()
    total = 0
    for job_id in jvm_context.statusTracker().getJobIdsForTag(tag):
        total += int(store.job(int(job_id)).numFailedTasks())
    return total


def fail_once(run_id: str) -> None:
    """TEST HOOK: make the first attempt of partition 0's scoring task fail, once per run.

    Inert unless the environment variable BATCHSCORE_TEST_FAIL_ONCE names an existing
    directory in the process running the task (for executors:
    `spark.executorEnv.BATCHSCORE_TEST_FAIL_ONCE`). Then, inside a Spark task of partition 0
    whose attempt number is 0, it creates `<dir>/<run id>.failed` (exclusively: a second task
    that gets here finds it and goes on) and raises StepError, after the task has handed its
    first batch to the writer. Spark then retries the task; the test checks that the output
    is exact and that the run counts one failed attempt. Never set it outside tests."""
    folder = os.environ.get(FAIL_ONCE_ENV)
    if not folder or not os.path.isdir(folder):
        return
    from pyspark import TaskContext

    task = TaskContext.get()
    if task is None or task.partitionId() != 0 or task.attemptNumber() != 0:
        return
    try:
        marker = os.open(os.path.join(folder, f"{run_id}.failed"), os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    os.close(marker)
    raise StepError(
        f"Scoring task of partition 0 failed on purpose: {FAIL_ONCE_ENV}={folder} is a test "
        "hook that fails one task attempt per run; unset it outside tests."
    )
