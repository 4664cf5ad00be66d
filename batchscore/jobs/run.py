"""Run a job: bind and optimize the plan, score on Spark, commit once to Delta, return lineage.

`run_job` is four phases, in this order because each one is cheaper than the next and a failure
in any of them must leave nothing behind:

1. `preflight`: everything that needs neither Spark nor a commit (spec and run date, plan and
   models, where the output goes, the Parquet inputs, whether this run already committed);
   then `nothing_to_do` ends a run that is already committed or selects no partition. A bad
   job fails in seconds; an already-done job costs no Spark session.
2. `prepare`: executors able to run Python, the lowered job (which checks dimension keys for
   duplicates with one small aggregation each) and the output table's schema against what the
   run will write. Still nothing committed.
3. `validate` (one aggregation over the rule columns: a broken `fail` rule stops the run here,
   exit 2, nothing committed), `commit_quarantine`, then `score_and_commit`: the quarantined
   rows first, under their own idempotency key, so a rerun after a failed predictions commit
   skips them instead of writing them twice; then the predictions, scored inside the Delta
   writer, in one commit, profiling inputs and outputs on the way (physical.monitoring).
4. `record_monitoring`: the run's metrics and drift to the monitoring table (jobs.monitoring),
   then `build_result`: the `RunResult`, by keyword.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from batchscore._version import __version__
from batchscore.jobs.monitoring import (
    Previous,
    RunKey,
    prefetch_previous,
    previous_profiles,
    record_run,
    run_summary,
)
from batchscore.monitor.health import HealthPlan, health_plan
from batchscore.monitor.metrics import (
    MetricRow,
    alert_line,
    alerts,
    comparison_rows,
    model_rows,
)
from batchscore.monitor.native_bins import native_bins
from batchscore.physical.comparison import Pairing
from batchscore.physical.input_checks import check_parquet_inputs
from batchscore.physical.lower import lower_for_write, lower_source, quarantined_rows
from batchscore.physical.monitoring import (
    RunMonitor,
    collect_run_profiles,
    monitor_dir,
    monitored_model,
)
from batchscore.physical.monitoring import discard as discard_monitor
from batchscore.physical.null_counts import NullCounts, collect_nulls, discard, null_dir
from batchscore.physical.profile import RunProfile, collect, profile_dir
from batchscore.physical.roles import has_challengers, serving_ranges
from batchscore.physical.score import ScoringTask
from batchscore.physical.session import check_executors, get_spark
from batchscore.physical.session import executor_timeout as executor_wait
from batchscore.physical.task_failures import RunJobs
from batchscore.physical.task_files import task_dir
from batchscore.physical.validation import (
    InPassChecks,
    ValidationReport,
    check_rows,
    check_types,
    refuse_failures,
)
from batchscore.plan import RULES, bind, optimize
from batchscore.plan.explain import compiled_trees
from batchscore.plan.nodes import LogicalPlan, Scan
from batchscore.plan.rules import Rule
from batchscore.result import RunResult, RunStatus
from batchscore.sinks.log import table_version, transaction_version
from batchscore.sinks.ownership import check_apart, check_table_folder
from batchscore.sinks.request import AppTransaction, WriteRequest
from batchscore.sinks.schema import SchemaPolicy, check_schema_compatible, table_arrow_schema
from batchscore.sinks.spark_io import CommitResult, write_delta
from batchscore.sinks.storage import delta_table, shared_tables
from batchscore.sinks.transform import FusedTransform
from batchscore.spec.load import with_run_date
from batchscore.spec.model import JobSpec, ModelSpec


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
    remote: str | None = None,
) -> RunResult:
    """Plan, score and commit one run (see the module docstring for the phases).

    `profile`: time every stage (physical.profile) and attach it to the result.
    `executor_timeout`: seconds to wait for executors before the first job (default
    BATCHSCORE_EXECUTOR_TIMEOUT, else 120; physical.session.check_executors)."""
    with shared_tables():  # the run's opens of one unchanged table share one handle
        job = preflight(spec, run_date=run_date, rules=rules, executor_timeout=executor_timeout)
        done = nothing_to_do(job, force=force)
        if done is not None:
            return done
        session = spark or get_spark(master, remote=remote)  # remote: Spark Connect URL
        monitoring = job.plan.spec.monitoring
        previous = prefetch_previous(
            None if monitoring is None else monitoring.table,
            RunKey(job.spec.name, job.spec.run_date, job.run_id),
        )
        with RunJobs(session, job.run_id) as jobs:  # counts the failed task attempts
            write = prepare(session, job, profile=profile, own_session=spark is None)
            validate(session, job)
            held = commit_quarantine(session, job)
            job.lap("checks + Spark session + validation + quarantine")
            commit, nulls = score_and_commit(job, write)
            job.lap("Spark job (scan, join, score, write) + commit")
        if commit.reason != "already_committed":
            record_monitoring(job, write, held=held, previous=previous)
            job.lap("monitoring table")
        run_profile = collect(profile_dir(job.out, job.run_id), job.phases) if profile else None
        result = _finished(job, commit, held=held, nulls=nulls, profile=run_profile)
        return replace(result, failed_tasks=jobs.failed_attempts())


# ---------------------------------------------------------------- 1. preflight (no Spark)


@dataclass
class Job:
    """What preflight established, for the later phases: the checked plan and the run's
    identity. `done` is the app transaction version this (job, run date) already committed
    (None: never), so a forced rerun commits `done + 1`."""

    spec: JobSpec
    plan: LogicalPlan
    run_id: str
    scored_at: datetime
    started: float
    wait: float
    done: int | None
    compile_seconds: float = 0.0
    compiled: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    health: HealthPlan = field(default_factory=HealthPlan)
    validation: ValidationReport | None = None
    monitoring: dict[str, Any] = field(default_factory=dict)
    alerts: list[MetricRow] = field(default_factory=list)

    @property
    def out(self) -> str:
        return self.plan.output.path

    @property
    def app_id(self) -> str:
        return app_id_for(self.spec)

    @property
    def app_version(self) -> int:
        return (self.done or 0) + 1

    def lap(self, phase: str) -> None:
        """Record the time since the previous phase ended (what `--profile` prints)."""
        self.phases[phase] = time.monotonic() - self.started - sum(self.phases.values())


def preflight(
    spec: JobSpec,
    *,
    run_date: str | None = None,
    rules: Sequence[Rule] = RULES,
    executor_timeout: float | None = None,
) -> Job:
    """Every check that needs no Spark and no commit, cheapest first, so a bad job fails in
    seconds: the run date, the executor timeout's value, the plan (which loads and checks every
    model), where the output and quarantine tables go, the Parquet inputs' files, and whether
    this (job, run date) already committed."""
    started = time.monotonic()
    scored_at = datetime.now(UTC).replace(microsecond=0)
    spec = with_run_date(spec, run_date)
    wait = executor_wait(executor_timeout)  # a bad value fails before any work
    plan = plan_job(spec, rules=rules)
    job = Job(
        spec=spec,
        plan=plan,
        run_id=f"{scored_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        scored_at=scored_at,
        started=started,
        wait=wait,
        done=None,
    )
    job.lap("plan + compile models")
    job.compile_seconds, job.compiled = compiled_trees(plan)
    job.health = health_plan(plan)
    job.validation = check_types(plan, job.health.type_rules)
    check_output_location(plan)
    check_parquet_inputs(plan)
    job.done = transaction_version(job.out, job.app_id)
    return job


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
    monitoring = plan.spec.monitoring
    table = monitoring.table if monitoring is not None else None
    label = "monitoring.table"
    if table is None and has_challengers(plan.spec):
        table, label = comparison_table(plan), "the challenger comparison table"
    if table is not None:
        others = {"the prediction table output.path": output.path}
        if output.quarantine is not None:
            others["the quarantine table output.quarantine"] = output.quarantine
        check_apart(label, table, {**inputs, **others}, harm=harm)
        check_table_folder(table, label=label)


def comparison_table(plan: LogicalPlan) -> str:
    """Where a spec with challengers and no `monitoring:` keeps its comparisons: a Delta table
    with the monitoring table's columns next to the prediction table."""
    return f"{plan.output.path.rstrip('/')}_comparisons"


def nothing_to_do(job: Job, *, force: bool) -> RunResult | None:
    """The result of a run that ends before Spark starts: this (job, run date) is already
    committed (`skipped`, unless `force`), or the partition filter selects no file of the
    source table (`empty`). None: there is work to do."""
    if job.done is not None and not force:
        return build_result(job, "skipped", version=table_version(job.out))
    empty = empty_selection(job.plan)
    if empty:
        return build_result(job, "empty", message=empty)
    return None


def empty_selection(plan: LogicalPlan) -> str:
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


# ---------------------------------------------------------------- 2. prepare (Spark, no commit)


@dataclass(frozen=True)
class Write:
    """The lowered job: the unscored joined input, the scoring task the Delta writer runs over
    it, and the Arrow schema of what that task yields (the table's schema)."""

    joined: DataFrame
    task: ScoringTask
    schema: pa.Schema


def prepare(session: SparkSession, job: Job, *, profile: bool, own_session: bool) -> Write:
    """Executors that run Python, the lowered plan, and the output table checked against it,
    before anything is committed: a missing executor (StepError, exit 1), a duplicate
    dimension key (DataError, exit 2) or a schema the table refuses (SinkError, exit 4) must
    not leave a quarantine commit behind. `own_session`: the run started the session, so a
    failed executor check stops it."""
    check_executors(session, job.wait, stop=own_session)
    counted = job.health.counted_rules
    joined, task, schema = lower_for_write(
        session,
        job.plan,
        run_id=job.run_id,
        scored_at=job.scored_at,
        rules=job.health.row_rules,
        counted=counted,
        roles=writes_roles(job),
    )
    checks = InPassChecks(counted, task_dir(job.out, "rules", job.run_id)) if counted else None
    task = replace(
        task, null_dir=null_dir(job.out, job.run_id), monitor=run_monitor(job), checks=checks
    )
    if profile:
        task = replace(task, profile_dir=profile_dir(job.out, job.run_id))
    output = job.plan.output
    check_schema_compatible(
        job.out, schema, partition_by=output.partition_by, policy=_schema_policy(job.plan)
    )
    return Write(joined, task, schema)


def writes_roles(job: Job) -> bool:
    """`role` / `served` columns: in every new table, and in an existing one that has them or
    whose spec now has challengers (a table from before them keeps its columns otherwise; adding
    them then needs output.evolve_schema, as any new column does)."""
    if table_version(job.out) is None:
        return True
    names = table_arrow_schema(delta_table(job.out)).names
    if "served" in names or any(n.endswith("__served") for n in names):
        return True
    return has_challengers(job.plan.spec)


def run_monitor(job: Job) -> RunMonitor | None:
    """What the scoring tasks profile when the spec monitors, or only compares challengers
    (no `monitoring:`: their predictions, for the comparison table); None otherwise."""
    spec = job.plan.spec
    if not job.health.monitored and not has_challengers(spec):
        return None
    kernels = {b.name: b.model.kernel for b in job.plan.models}
    models = tuple(
        monitored_model(
            m.name,
            m.inputs if job.health.monitored else (),
            m.profile,
            kernels[m.name].classes,
        )
        for m in job.health.models
    )
    pairing = None
    if has_challengers(spec):
        ranges = serving_ranges(spec)
        pairing = Pairing(
            tuple((m.name, m.champion) for m in spec.models if m.role != "champion"),
            tuple(ranges.items()),
        )
    folder = monitor_dir(job.out, job.run_id)
    return RunMonitor(models, folder, pairing=pairing, native=native_bins())


# ---------------------------------------------------------------- 3. validation and commits


def validate(session: SparkSession, job: Job) -> None:
    """Count the violations of every `fail` and `quarantine` rule in one pass; a broken
    `fail` rule raises DataError (exit 2) before anything is committed. `warn` rules are
    counted by the scoring task itself, on the rows it scores (no pass of their own)."""
    rules = job.health.enforced_rules
    if not rules:
        return
    joined = lower_source(session, job.plan, check_keys=False)
    checked = check_rows(joined, rules, list(job.plan.spec.tables))
    refuse_failures(checked)
    job.validation = checked if job.validation is None else job.validation.plus(checked)


def commit_quarantine(session: SparkSession, job: Job) -> int:
    """Commit the rows the quarantine joins refused, before the predictions; their count.

    Its own idempotency key (the job's, plus ':quarantine') makes a rerun after a failed
    predictions commit skip it instead of writing the rows twice.
    """
    plan = job.plan
    rows = quarantined_rows(
        session, plan, run_id=job.run_id, scored_at=job.scored_at, rules=job.health.row_rules
    )
    if rows is None or plan.output.quarantine is None:
        return 0
    partition_by = [c for c in plan.output.partition_by if c in rows.columns]
    commit = write_delta(
        rows,
        plan.output.quarantine,
        mode="overwrite_partitions" if partition_by and plan.output.mode != "append" else "append",
        partition_by=partition_by,
        app=AppTransaction(f"{job.app_id}:quarantine", job.app_version),
        metadata={"batchscore.run_id": job.run_id, "batchscore.job": plan.spec.name},
        schema_policy=SchemaPolicy(evolve_schema=True),  # tables from before `reason`
    )
    return commit.rows


def score_and_commit(job: Job, write: Write) -> tuple[CommitResult, NullCounts]:
    """Score inside the Delta writer and commit once; then add up the null predictions the
    write tasks counted (they are known only once every file is written)."""
    nulls_at = null_dir(job.out, job.run_id)
    checks = write.task.checks
    try:
        commit = _write_predictions(job, write)
    except BaseException:
        discard(nulls_at)
        discard_monitor(write.task.monitor)
        if checks is not None:
            checks.discard()
        raise
    if checks is not None:
        counted = checks.collect()
        job.validation = counted if job.validation is None else job.validation.plus(counted)
    return commit, collect_nulls(nulls_at)


def record_monitoring(job: Job, write: Write, *, held: int, previous: Previous) -> None:
    """The run's metrics to the monitoring table, after the predictions commit. `previous`:
    the previous run's profiles, read while the run scored (None: read them now)."""
    monitor = write.task.monitor
    spec = job.plan.spec.monitoring
    if monitor is None:
        return
    profiles, compared = collect_run_profiles(
        monitor, source=f"run {job.run_id}", created_at=job.scored_at.isoformat()
    )
    key = RunKey(job.spec.name, job.spec.run_date, job.run_id)
    table = spec.table if spec is not None else comparison_table(job.plan)
    rows = comparison_rows(job.health, compared, profiles)
    if spec is not None:
        earlier = previous_profiles(table, key) if previous is None else previous.result()
        rows = [
            row
            for m in job.health.models
            for row in model_rows(m, profiles[m.name], earlier.get(m.name), quarantined=held)
        ] + rows
    trainings = {m.name: m.profile for m in job.health.models}
    pairs = [(m.name, m.champion) for m in job.plan.spec.models if m.role != "champion"]
    version = record_run(
        table, key, rows, profiles, trainings, computed_at=job.scored_at, pairs=pairs
    )
    job.alerts = alerts(rows)
    on_alert = spec.on_alert if spec is not None else "warn"
    job.monitoring = run_summary(table, version, len(rows), on_alert, job.alerts)


def _write_predictions(job: Job, write: Write) -> CommitResult:
    output = job.plan.output
    request = WriteRequest(
        job.out,
        output.mode,
        partition_by=output.partition_by,
        app=AppTransaction(job.app_id, job.app_version),
        metadata=lineage(job.plan, run_id=job.run_id, scored_at=job.scored_at),
        schema_policy=_schema_policy(job.plan),
        transform=FusedTransform(write.task, write.schema),
    )
    return write_delta(write.joined, request)


def _schema_policy(plan: LogicalPlan) -> SchemaPolicy:
    """Which columns a run may add (output.evolve_schema) or leave null (a wide layout's
    models dropped from the spec)."""
    return SchemaPolicy(evolve_schema=plan.output.evolve_schema, fill_missing=_fill_missing(plan))


_MODEL_COLUMN_SUFFIXES = ("__prediction", "__label", "__probability", "__served")


def _model_output_column(name: str) -> bool:
    """A wide-layout model column: a model dropped from the spec leaves them null in new rows
    (the table keeps them, so older rows keep their predictions)."""
    return any(name.endswith(s) and len(name) > len(s) for s in _MODEL_COLUMN_SUFFIXES)


def _fill_missing(plan: LogicalPlan) -> Callable[[str], bool] | None:
    """Which table columns a write may leave out (filled with nulls): model columns of the wide
    layout; none in the long layout."""
    return _model_output_column if plan.output.layout == "wide" else None


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
                **({"registry": b.model.source} if b.model.source else {}),
                **({"role": m.role, "champion": m.champion} if m.role != "champion" else {}),
            }
            for b, m in zip(plan.models, _model_specs(plan), strict=True)
        },
        "batchscore.inputs": {
            name: {"path": info.path, "format": info.spec.format, "version": info.version}
            for name, info in plan.tables.items()
        },
    }


# ---------------------------------------------------------------- 4. result


def _finished(
    job: Job,
    commit: CommitResult,
    *,
    held: int,
    nulls: NullCounts,
    profile: RunProfile | None,
) -> RunResult:
    """The result of a run that reached the predictions commit: committed, or empty (every
    selected row quarantined, or no row at all), or skipped (a concurrent run with the same
    key committed first)."""
    if commit.reason == "empty":
        why = (
            f"all {held:,} selected rows were quarantined."
            if held
            else "the source selection produced no rows."
        )
        return build_result(job, "empty", message=why, held=held, nulls=nulls, profile=profile)
    status: RunStatus = "skipped" if commit.reason == "already_committed" else "committed"
    return build_result(
        job,
        status,
        rows=commit.rows if status == "committed" else 0,
        version=commit.version,
        held=held,
        nulls=nulls,
        profile=profile,
    )


def build_result(
    job: Job,
    status: RunStatus,
    *,
    rows: int = 0,
    version: int | None = None,
    message: str = "",
    held: int = 0,
    nulls: NullCounts | None = None,
    profile: RunProfile | None = None,
) -> RunResult:
    """The `RunResult` of this run; `seconds` counts from the start of preflight."""
    return RunResult(
        run_id=job.run_id,
        job=job.spec.name,
        run_date=job.spec.run_date,
        status=status,
        rows=rows,
        table_version=version,
        output_path=job.out,
        seconds=time.monotonic() - job.started,
        models={b.name: b.model.version for b in job.plan.models},
        message=message,
        quarantined=held,
        violations=_violations(job),
        warnings=tuple(o.message() for o in job.validation.violated("warn"))
        if job.validation
        else (),
        monitoring=job.monitoring,
        alert_line=alert_line(job.alerts),
        fail_on_alert=bool(job.monitoring) and job.monitoring.get("on_alert") == "fail",
        compile_seconds=job.compile_seconds,
        compiled=job.compiled,
        profile=profile,
        nulls=nulls or {},
    )


def _violations(job: Job) -> dict[str, int]:
    if job.validation is None:
        return {}
    return {name: n for name, n in job.validation.counts().items() if n}


def _model_specs(plan: LogicalPlan) -> list[ModelSpec]:
    specs = {m.name: m for m in plan.spec.models}
    return [specs[b.name] for b in plan.models]
