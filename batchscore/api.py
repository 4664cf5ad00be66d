"""The public Python API (`import batchscore as bs`), documented in docs/api.md.

Thin, typed, keyword-only past the first argument. Spark, delta-rs and the model libraries are
imported inside the functions that need them, so `import batchscore`, `load_spec` and `explain`
work (and fail) in milliseconds without a JVM.
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

    from batchscore.datasets.demo import DemoInfo
    from batchscore.monitor.profile import Profile
    from batchscore.monitor.report import ReportSummary

__all__ = [
    "RunResult",
    "build_demo",
    "explain",
    "history",
    "load_spec",
    "profile",
    "read_table",
    "report",
    "run",
    "run_range",
    "score",
    "spark_session",
    "sql",
]


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
    remote: str | None = None,
) -> RunResult:
    """Plan, score and commit one run. A rerun of a committed (job, run date) is a no-op.
    `profile`: time each stage; `result.summary()` then prints where the time went.
    `executor_timeout`: seconds to get executors able to run Python before the first job
    (default $BATCHSCORE_EXECUTOR_TIMEOUT, else 120); StepError (exit 1) otherwise.
    `remote`: a Spark Connect URL, sc://HOST:PORT (docs/connect.md)."""
    from batchscore.jobs.run import run_job

    return run_job(
        _as_spec(spec, run_date),
        master=master,
        spark=_ready(spark),
        force=force,
        profile=profile,
        executor_timeout=executor_timeout,
        remote=remote,
    )


def run_range(
    spec: JobSpec | str | Path,
    *,
    start: str | None = None,
    end: str | None = None,
    only_new: bool = False,
    master: str | None = None,
    spark: SparkSession | None = None,
    remote: str | None = None,
) -> list[RunResult]:
    """Backfill: run each date of [start, end] in order, one commit per date; committed dates
    are skipped (an interrupted backfill resumes). only_new: see `batchscore.jobs.backfill`.
    `remote`: a Spark Connect URL, sc://HOST:PORT (docs/connect.md)."""
    from batchscore.jobs.backfill import run_range as _run_range

    loaded = spec if isinstance(spec, JobSpec) else _load_spec(spec)
    if remote is not None and spark is None:
        spark = spark_session(master, remote=remote)
        master = None
    spark = _ready(spark)
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
    tables: Mapping[str, str | Path],
    spark: SparkSession | None = None,
    as_of: Mapping[str, int] | None = None,
    remote: str | None = None,
) -> DataFrame:
    """Run Spark SQL with each Delta table registered as a fresh temporary view.
    `as_of`: {view name: table version} to query an older version (time travel).
    `remote`: a Spark Connect URL, sc://HOST:PORT, when `spark` is not given."""
    from batchscore.sinks.spark_io import register_view

    session = _ready(spark) or spark_session(remote=remote)
    for name, path in tables.items():
        register_view(session, name, str(path), version=(as_of or {}).get(name))
    return session.sql(query)


def _ready(spark: SparkSession | None) -> SparkSession | None:
    """A session the caller passed, with batchscore's data sources registered (a Connect
    session made outside batchscore lacks them)."""
    if spark is None:
        return None
    from batchscore.physical.session import ensure_sources

    return ensure_sources(spark)


def spark_session(
    master: str | None = None,
    *,
    conf: Mapping[str, Any] | None = None,
    remote: str | None = None,
) -> SparkSession:
    """The active SparkSession, or a new one set up for batchscore: workers run this
    interpreter, local Spark binds to loopback, the Delta data source is registered. `master`
    defaults to local[*] (under spark-submit, the submitted master); `conf`: Spark settings.
    `remote` (else $BATCHSCORE_REMOTE, else $SPARK_REMOTE): a Spark Connect URL,
    sc://HOST:PORT; the session is then a Connect client (docs/connect.md)."""
    from batchscore.physical.session import get_spark

    return get_spark(master, dict(conf) if conf is not None else None, remote=remote)


def read_table(
    path: str | Path,
    *,
    version: int | None = None,
    spark: SparkSession | None = None,
    remote: str | None = None,
) -> DataFrame:
    """A Delta table (a prediction or quarantine table, or any input) as a Spark DataFrame,
    read fresh; `version`: an older version of the table (time travel); `remote`: a Spark
    Connect URL when `spark` is not given."""
    from batchscore.sinks.spark_io import read_delta

    return read_delta(_ready(spark) or spark_session(remote=remote), str(path), version=version)


def history(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """A Delta table's commits, newest first, with their lineage: `version`, `timestamp` (ms
    since the epoch), `operation`, `operation_parameters`, and `metadata` (run id, job, run
    date, spec hash, model sha256s, input table versions). No Spark needed."""
    from batchscore.sinks.log import history as table_history

    return table_history(str(path), limit=limit)


def profile(
    spec: JobSpec | str | Path,
    *,
    run_date: str | None = None,
    model: str | None = None,
    out: str | Path | None = None,
    spark: SparkSession | None = None,
) -> dict[str, Profile]:
    """Training profiles of the spec's models (or `model`) on a reference run date: inputs as
    the job assembles them, and predictions (docs/health.md). `out`: also save them there,
    as `batchscore profile` does (one model: out/profile.json, else out/<model>/)."""
    from batchscore.jobs.profiling import profile_spec
    from batchscore.physical.session import get_spark
    from batchscore.sinks.storage import join

    session = _ready(spark) or get_spark(None)
    profiles = profile_spec(session, _as_spec(spec, run_date), run_date=run_date, model=model)
    if out is not None:
        single = len(profiles) == 1
        for name, made in profiles.items():
            made.save(out if single else join(out, name))
    return profiles


def report(
    monitoring: str | Path,
    *,
    job: str,
    out: str | Path,
    model: str | None = None,
    last: int = 30,
    predictions: str | Path | None = None,
) -> ReportSummary:
    """The monitoring table as one static HTML file (what `batchscore report` writes);
    `predictions`: the prediction table, for the champion vs challenger score scatter."""
    from batchscore.monitor.report import write_report

    where = str(predictions) if predictions is not None else None
    return write_report(str(monitoring), job, str(out), model=model, last=last, predictions=where)


def build_demo(
    root: str | Path,
    *,
    conf_path: str | Path,
    days: int = 7,
    rows_per_day: int = 20_000,
    seed: int = 0,
    monitoring: bool = False,
) -> DemoInfo:
    """Write the demo star schema (sales, stores, products) under `root`, train its three
    models and write its job spec to `conf_path`: what `make demo` and the quickstart use
    (`monitoring`: the spec also records each run in a monitoring table under out/)."""
    from batchscore.datasets.demo import build_demo as build

    return build(
        Path(root),
        conf_path=Path(conf_path),
        days=days,
        rows_per_day=rows_per_day,
        seed=seed,
        monitoring=monitoring,
    )
