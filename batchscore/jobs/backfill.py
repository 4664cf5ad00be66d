"""Backfills and incremental runs: many run dates, one atomic commit per date, in date order.

`run_range(spec, start=D1, end=D2)` runs every calendar date from D1 to D2 (inclusive) through
`run_job`. A date whose (job, run date) Delta app transaction is already committed is skipped
without starting a Spark job, so an interrupted backfill simply resumes when run again.

`only_new=True` ("score what is new") narrows the dates to:

1. dates whose source selection is non-empty: the spec's `source.where` for that date matches at
   least one partition (file) of the fact table. Without start/end, the candidate dates are the
   distinct values of the fact table's first partition column (the usual `ds = '{run_date}'`);
2. and, of those, dates that are NOT committed with the CURRENT models. The table's own lineage
   says what each date was scored with: the newest commit whose metadata has
   `batchscore.job == job` and `batchscore.run_date == date` carries `batchscore.models`
   {name: {sha256, version}}. A date is up to date when that commit exists and its model names
   and sha256s equal the spec's. A date committed with other models is scored again (a forced
   run that replaces its partition), but only when the output mode is overwrite_partitions; with
   mode append it is reported and left alone, since a second append would duplicate its rows.

Each date prints one summary line (through `echo`). The first failure stops the backfill and
propagates; dates committed before it stay committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from batchscore.errors import SpecError
from batchscore.result import RunResult
from batchscore.spec.load import with_run_date
from batchscore.spec.model import JobSpec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MAX_DATES = 10_000


def date_range(start: str, end: str) -> list[str]:
    """ISO dates from `start` to `end`, both included, in order."""
    first, last = _parse_date(start, "--from"), _parse_date(end, "--to")
    if last < first:
        raise SpecError(f"--to {end} is before --from {start}; swap them.")
    days = (last - first).days + 1
    if days > MAX_DATES:
        raise SpecError(f"--from {start} --to {end} spans {days} dates (max {MAX_DATES}).")
    return [(first + timedelta(days=i)).isoformat() for i in range(days)]


def _parse_date(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SpecError(f"{flag} '{text}' is not a date; use YYYY-MM-DD.") from None


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def committed_models(path: str, job: str) -> dict[str, dict[str, str]]:
    """{run date: {model name: sha256}} from the newest commit of each run date of `job`."""
    from batchscore.sinks.log import log_commits
    from batchscore.sinks.storage import is_delta_table

    if not is_delta_table(path):
        return {}
    found: dict[str, dict[str, str]] = {}
    for _, info in log_commits(path):  # newest first
        if info.get("batchscore.job") != job:
            continue
        run_date = info.get("batchscore.run_date")
        if not isinstance(run_date, str) or run_date in found:
            continue
        models = _json_value(info.get("batchscore.models")) or {}
        found[run_date] = {
            str(name): str((entry or {}).get("sha256"))
            for name, entry in models.items()
            if isinstance(entry, dict) or entry is None
        }
    return found


@dataclass(frozen=True)
class _Decision:
    run: bool
    force: bool = False
    reason: str = ""


def _source_dates(spec: JobSpec) -> list[str]:
    """Distinct values of the fact table's first partition column, sorted."""
    from batchscore.plan.catalog import describe_table

    table = spec.source.table
    info = describe_table(table, spec.tables[table])
    if not info.partition_columns:
        raise SpecError(
            f"--only-new without --from/--to needs a partitioned fact table; '{table}' has no "
            "partition columns. Pass --from and --to."
        )
    column = info.partition_columns[0]
    values = {parts.get(column) for _, parts, _, _ in info.files}
    return sorted(v for v in values if v is not None)


def run_range(
    spec: JobSpec,
    *,
    start: str | None = None,
    end: str | None = None,
    only_new: bool = False,
    master: str | None = None,
    spark: SparkSession | None = None,
    echo: Callable[[str], None] = print,
) -> list[RunResult]:
    """Run every date of [start, end] in order (see the module docstring for `only_new`)."""
    from batchscore.jobs.run import empty_selection, plan_job, run_job

    if (start is None) != (end is None):
        raise SpecError("--from and --to go together; pass both (or neither, with --only-new).")
    if start is None or end is None:
        if not only_new:
            raise SpecError("pass --from and --to, or --only-new, to run a range of dates.")
        dates = _source_dates(spec)
    else:
        dates = date_range(start, end)
    results: list[RunResult] = []
    lineage: dict[str, dict[str, str]] | None = None
    for run_date in dates:
        dated = with_run_date(spec, run_date)
        decision = _Decision(run=True)
        if only_new:
            plan = plan_job(dated)
            empty = empty_selection(plan)
            if empty:
                result = _not_run(dated, plan.output.path, "empty", empty)
                echo(result.summary())
                results.append(result)
                continue
            if lineage is None:
                lineage = committed_models(plan.output.path, spec.name)
            current = {b.name: b.model.sha256 for b in plan.models}
            decision = _decide(lineage.get(run_date), current, plan.output.mode)
            if not decision.run:
                result = _not_run(dated, plan.output.path, "skipped", decision.reason)
                echo(f"Job '{spec.name}' run date {run_date}: {decision.reason}")
                results.append(result)
                continue
        result = run_job(dated, master=master, spark=spark, force=decision.force)
        line = result.summary()
        if decision.reason:
            line = f"{line} ({decision.reason})"
        echo(line)
        results.append(result)
    return results


def _decide(committed: dict[str, str] | None, current: dict[str, str], mode: str) -> _Decision:
    if committed is None:
        return _Decision(run=True)
    if committed == current:
        return _Decision(run=False, reason="up to date with the current models; nothing to do.")
    changed = sorted(
        name for name in set(committed) | set(current) if committed.get(name) != current.get(name)
    )
    if mode != "overwrite_partitions":
        return _Decision(
            run=False,
            reason=(
                f"committed with other versions of {', '.join(changed)}, but the output mode is "
                f"{mode}: not re-scored (that would duplicate rows); use overwrite_partitions."
            ),
        )
    return _Decision(run=True, force=True, reason=f"re-scored: new {', '.join(changed)}")


def _not_run(spec: JobSpec, out: str, status: Any, message: str) -> RunResult:
    from batchscore.sinks.log import table_version

    return RunResult(
        run_id="",
        job=spec.name,
        run_date=spec.run_date,
        status=status,
        rows=0,
        table_version=table_version(out),
        output_path=out,
        seconds=0.0,
        message=message,
    )
