"""Run a job: bind and optimize the plan, score on Spark, commit once to Delta, return lineage.

Everything that can be checked without Spark is checked first (spec, schemas, models, where the
output goes, the output table's schema and whether this run already committed), so a bad job
fails in seconds and an already-done job costs nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from batchscore import __version__
from batchscore.physical.input_checks import check_parquet_inputs
from batchscore.physical.lower import lower_for_write, quarantined_rows
from batchscore.physical.null_counts import NullCounts, collect_nulls, discard, null_dir
from batchscore.physical.profile import RunProfile, collect, profile_dir
from batchscore.physical.score import ScoringTask
from batchscore.physical.session import check_executors, get_spark
from batchscore.physical.session import executor_timeout as executor_wait
from batchscore.plan import RULES, bind, optimize
from batchscore.plan.explain import compiled_trees
from batchscore.plan.nodes import LogicalPlan, Scan
from batchscore.plan.rules import Rule
from batchscore.result import RunResult, RunStatus
from batchscore.sinks.delta_table import (
    CommitResult,
    check_schema_compatible,
    transaction_version,
    write_delta,
)
from batchscore.sinks.ownership import check_apart, check_table_folder
from batchscore.spec.load import with_run_date
from batchscore.spec.model import JobSpec


def app_id_for(spec: JobSpec) -> str:
    """The idempotency key: one committed run per (job, run date)."""
    return f"batchscore:{spec.name}:{spec.run_date or 'all'}"


def plan_job(spec: JobSpec, *, rules: Sequence[Rule] = RULES) -> LogicalPlan:
    return optimize(bind(spec), rules)


def run_job(
    spec: JobSpec,
    *,
    run_date: str | None = None,
    master: str | None = None,
    spark: SparkSession | None = None,
    force: bool = False,
    rules: Sequence[Rule] = RULES,
    profile: bool = False,
    executor_timeout: float | None = None,
) -> RunResult:
    """`profile`: time every stage (physical.profile) and attach it to the result.
    `executor_timeout`: seconds to wait for executors before the first job (default
    BATCHSCORE_EXECUTOR_TIMEOUT, else 120; physical.session.check_executors)."""
    started = time.monotonic()
    scored_at = datetime.now(UTC).replace(microsecond=0)
    spec = with_run_date(spec, run_date)
    wait = executor_wait(executor_timeout)  # a bad value fails before any work
    run_id = f"{scored_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    phases: dict[str, float] = {}
    plan = plan_job(spec, rules=rules)
    phases["plan + compile models"] = time.monotonic() - started
    check_output_location(plan)
    check_parquet_inputs(plan)
    out = plan.output.path
    app_id = app_id_for(spec)
    done = transaction_version(out, app_id)
    versions = {b.name: b.model.version for b in plan.models}
    compile_seconds, compiled = compiled_trees(plan)

    held = 0
    run_profile: RunProfile | None = None
    nulls: NullCounts = {}

    def result(status: RunStatus, rows: int, version: int | None, message: str = "") -> RunResult:
        return RunResult(
            run_id,
            spec.name,
            spec.run_date,
            status,
            rows,
            version,
            out,
            time.monotonic() - started,
            versions,
            message,
            held,
            compile_seconds,
            compiled,
            run_profile,
            nulls,
        )

    if done is not None and not force:
        from batchscore.sinks.delta_table import table_version

        return result("skipped", 0, table_version(out))
    empty = _empty_selection(plan)
    if empty:
        return result("empty", 0, None, empty)
    session = spark or get_spark(master)
    check_executors(session, wait, stop=spark is None)
    held = _write_quarantine(session, plan, app_id, (done or 0) + 1, run_id, scored_at)
    joined, task, schema = lower_for_write(session, plan, run_id=run_id, scored_at=scored_at)
    task = replace(task, null_dir=null_dir(out, run_id))
    if profile:
        task = replace(task, profile_dir=profile_dir(out, run_id))
    phases["checks + Spark session + quarantine"] = (
        time.monotonic() - started - sum(phases.values())
    )
    fill_missing = _model_output_column if plan.output.layout == "wide" else None
    check_schema_compatible(
        out,
        schema,
        partition_by=plan.output.partition_by,
        evolve_schema=plan.output.evolve_schema,
        fill_missing=fill_missing,
    )
    try:
        commit = _write_predictions(plan, joined, task, schema, app_id, done, run_id, scored_at)
    except BaseException:
        discard(null_dir(out, run_id))
        raise
    nulls = collect_nulls(null_dir(out, run_id))
    phases["Spark job (scan, join, score, write) + commit"] = (
        time.monotonic() - started - sum(phases.values())
    )
    if profile:
        run_profile = collect(profile_dir(out, run_id), phases)
    if commit.reason == "empty":
        why = f"all {held:,} selected rows were quarantined." if held else "the source "
        return result("empty", 0, None, why if held else why + "selection produced no rows.")
    if commit.reason == "already_committed":
        return result("skipped", 0, commit.version)
    return result("committed", commit.rows, commit.version)


def _write_predictions(
    plan: LogicalPlan,
    joined: DataFrame,
    task: ScoringTask,
    schema: pa.Schema,
    app_id: str,
    done: int | None,
    run_id: str,
    scored_at: datetime,
) -> CommitResult:
    out = plan.output.path
    fill_missing = _model_output_column if plan.output.layout == "wide" else None
    return write_delta(
        joined,
        out,
        transform=task,
        transform_schema=schema,
        mode=plan.output.mode,
        partition_by=plan.output.partition_by,
        app_id=app_id,
        app_version=(done or 0) + 1,
        metadata=lineage(plan, run_id=run_id, scored_at=scored_at),
        evolve_schema=plan.output.evolve_schema,
        fill_missing=fill_missing,
    )


def check_output_location(plan: LogicalPlan) -> None:
    """Before any Spark job: the output and quarantine tables must not be (inside, or contain)
    an input table of the spec, nor each other, symlinks resolved; and a table the run would
    create must go to a folder batchscore owns (missing, empty, or only batchscore's files).
    SinkError (exit 4) otherwise; write_delta checks the folder again for every write."""
    output = plan.output
    inputs = {f"input table '{name}'": table.path for name, table in plan.spec.tables.items()}
    harm = "overwrite or vacuum the data the job reads"
    check_apart("output.path", output.path, inputs, harm=harm)
    if output.quarantine is not None:
        check_apart("output.quarantine", output.quarantine, inputs, harm=harm)
        check_apart(
            "output.quarantine",
            output.quarantine,
            {"the prediction table output.path": output.path},
            harm="mix the two tables' files",
        )
    check_table_folder(output.path, label="output.path")
    if output.quarantine is not None:
        check_table_folder(output.quarantine, label="output.quarantine")


def _write_quarantine(
    spark: SparkSession,
    plan: LogicalPlan,
    app_id: str,
    app_version: int,
    run_id: str,
    scored_at: datetime,
) -> int:
    """Commit the rows the quarantine joins refused, before the predictions.

    Its own idempotency key (the job's, plus ':quarantine') makes a rerun after a failed
    predictions commit skip it instead of writing the rows twice.
    """
    rows = quarantined_rows(spark, plan, run_id=run_id, scored_at=scored_at)
    if rows is None or plan.output.quarantine is None:
        return 0
    partition_by = [c for c in plan.output.partition_by if c in rows.columns]
    commit = write_delta(
        rows,
        plan.output.quarantine,
        mode="overwrite_partitions" if partition_by and plan.output.mode != "append" else "append",
        partition_by=partition_by,
        app_id=f"{app_id}:quarantine",
        app_version=app_version,
        metadata={"batchscore.run_id": run_id, "batchscore.job": plan.spec.name},
    )
    return commit.rows


_MODEL_COLUMN_SUFFIXES = ("__prediction", "__label", "__probability")


def _model_output_column(name: str) -> bool:
    """A wide-layout model column: a model dropped from the spec leaves them null in new rows
    (the table keeps them, so older rows keep their predictions)."""
    return any(name.endswith(s) and len(name) > len(s) for s in _MODEL_COLUMN_SUFFIXES)


def _empty_selection(plan: LogicalPlan) -> str:
    """A partition filter that matches no file: say so before starting any Spark job."""
    for scan in plan.scans():
        if (
            isinstance(scan, Scan)
            and scan.partition_filters
            and scan.table == plan.spec.source.table
        ):
            info = plan.tables[scan.table]
            if not info.select_files(list(scan.partition_filters)):
                where = plan.spec.source.where
                return f"source table '{scan.table}' has no partition matching {where!r}."
    return ""


def lineage(plan: LogicalPlan, *, run_id: str, scored_at: datetime) -> dict[str, Any]:
    """Commit metadata: enough to tell exactly what produced every row of this version."""
    spec = plan.spec
    return {
        "batchscore.run_id": run_id,
        "batchscore.job": spec.name,
        "batchscore.run_date": spec.run_date,
        "batchscore.spec_hash": spec.spec_hash,
        "batchscore.scored_at": scored_at.isoformat(),
        "batchscore.version": __version__,
        "batchscore.models": {
            b.name: {
                "sha256": b.model.sha256,
                "version": b.model.version,
                "kernel": b.model.kernel.kind,
            }
            for b in plan.models
        },
        "batchscore.inputs": {
            name: {"path": info.path, "format": info.spec.format, "version": info.version}
            for name, info in plan.tables.items()
        },
    }
