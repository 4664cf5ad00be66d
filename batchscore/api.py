"""The notebook API of CONTRACT.md: thin, typed, keyword-only past the first argument.

Spark modules are imported inside the functions that need them, so `import batchscore`,
`load_spec` and `explain` work (and fail) in milliseconds without a JVM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from batchscore.result import RunResult
from batchscore.spec import JobSpec
from batchscore.spec import load_spec as _load_spec
from batchscore.spec.load import with_run_date

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["RunResult", "explain", "load_spec", "run", "score", "sql"]


def load_spec(path: str | Path, *, run_date: str | None = None) -> JobSpec:
    """Load and validate a job spec; `{run_date}` may stay open until `run(..., run_date=)`."""
    return _load_spec(path, run_date=run_date)


def _as_spec(spec: JobSpec | str | Path, run_date: str | None) -> JobSpec:
    loaded = spec if isinstance(spec, JobSpec) else _load_spec(spec, run_date=run_date)
    return with_run_date(loaded, run_date)


def run(
    spec: JobSpec | str | Path,
    *,
    run_date: str | None = None,
    master: str | None = None,
    spark: SparkSession | None = None,
    force: bool = False,
    profile: bool = False,
    executor_timeout: float | None = None,
) -> RunResult:
    """Plan, score and commit one run. A rerun of a committed (job, run date) is a no-op.
    `profile`: time each stage; `result.summary()` then prints where the time went.
    `executor_timeout`: seconds to get executors able to run Python before the first job
    (default $BATCHSCORE_EXECUTOR_TIMEOUT, else 120); StepError (exit 1) otherwise."""
    from batchscore.jobs.run import run_job

    return run_job(
        _as_spec(spec, run_date),
        master=master,
        spark=spark,
        force=force,
        profile=profile,
        executor_timeout=executor_timeout,
    )


def run_range(
    spec: JobSpec | str | Path,
    *,
    start: str | None = None,
    end: str | None = None,
    only_new: bool = False,
    master: str | None = None,
    spark: SparkSession | None = None,
) -> list[RunResult]:
    """Backfill: run each date of [start, end] in order, one commit per date; committed dates
    are skipped (an interrupted backfill resumes). only_new: see `batchscore.jobs.backfill`."""
    from batchscore.jobs.backfill import run_range as _run_range

    loaded = spec if isinstance(spec, JobSpec) else _load_spec(spec)
    return _run_range(loaded, start=start, end=end, only_new=only_new, master=master, spark=spark)


def explain(spec: JobSpec | str | Path, *, run_date: str | None = None) -> str:
    """The optimized plan as text: the same text `batchscore explain` prints."""
    from batchscore.plan import bind, optimize
    from batchscore.plan import explain as explain_plan

    return explain_plan(optimize(bind(_as_spec(spec, run_date))))


def score(
    df: DataFrame,
    *,
    models: Sequence[Mapping[str, Any]],
    id_columns: Sequence[str] = (),
    layout: Literal["long", "wide"] = "long",
) -> DataFrame:
    """Score a Spark DataFrame ad hoc; each model is a fitted estimator or an artifact path."""
    from batchscore.physical.adhoc import score_dataframe

    return score_dataframe(df, models=models, id_columns=id_columns, layout=layout)


def sql(
    query: str,
    *,
    tables: Mapping[str, str],
    spark: SparkSession | None = None,
    as_of: Mapping[str, int] | None = None,
) -> DataFrame:
    """Run Spark SQL with each Delta table registered as a fresh temporary view."""
    from batchscore.physical.session import get_spark
    from batchscore.sinks.delta_table import register_view

    session = spark or get_spark()
    for name, path in tables.items():
        register_view(session, name, str(path), version=(as_of or {}).get(name))
    return session.sql(query)
