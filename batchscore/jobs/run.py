"""Run a job: bind and optimize the plan, score on Spark, commit once to Delta, return lineage.

Everything that can be checked without Spark is checked first (spec, schemas, models, the
output table's schema and whether this run already committed), so a bad job fails in seconds
and an already-done job costs nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.pandas.types import to_arrow_schema

from batchscore import __version__
from batchscore.physical.lower import lower
from batchscore.physical.session import get_spark
from batchscore.plan import RULES, bind, optimize
from batchscore.plan.nodes import LogicalPlan, Scan
from batchscore.plan.rules import Rule
from batchscore.result import RunResult, RunStatus
from batchscore.sinks.delta_table import check_schema_compatible, transaction_version, write_delta
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
) -> RunResult:
    started = time.monotonic()
    scored_at = datetime.now(UTC).replace(microsecond=0)
    spec = with_run_date(spec, run_date)
    run_id = f"{scored_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    plan = plan_job(spec, rules=rules)
    out = plan.output.path
    app_id = app_id_for(spec)
    done = transaction_version(out, app_id)
    versions = {b.name: b.model.version for b in plan.models}

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
        )

    if done is not None and not force:
        from batchscore.sinks.delta_table import table_version

        return result("skipped", 0, table_version(out))
    empty = _empty_selection(plan)
    if empty:
        return result("empty", 0, None, empty)
    session = spark or get_spark(master)
    predictions = lower(session, plan, run_id=run_id, scored_at=scored_at)
    check_schema_compatible(
        out,
        to_arrow_schema(predictions.schema, timezone="UTC"),
        partition_by=plan.output.partition_by,
    )
    commit = write_delta(
        predictions,
        out,
        mode=plan.output.mode,
        partition_by=plan.output.partition_by,
        app_id=app_id,
        app_version=(done or 0) + 1,
        metadata=lineage(plan, run_id=run_id, scored_at=scored_at),
    )
    if commit.reason == "empty":
        return result("empty", 0, None, "the source selection produced no rows.")
    if commit.reason == "already_committed":
        return result("skipped", 0, commit.version)
    return result("committed", commit.rows, commit.version)


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
