"""The monitoring table: each run's rows (monitor.metrics), written after the predictions commit.

A plain Delta table partitioned by `job`, written with delta-rs from the driver (a run adds a
few hundred rows). A rerun of a (job, run date) replaces that run's rows in one commit
(delta-rs' predicate overwrite), so rows are never duplicated. Next to the rows, under
`<table>/_batchscore/` (skipped by Delta readers), each run leaves its profiles (the next run's
`previous` baseline) and the histograms the report draws, one JSON file per (job, run date).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from batchscore.errors import SinkError, first_line
from batchscore.monitor.metrics import (
    MetricRow,
    challenger_histograms,
    histograms,
    profiles_json,
)
from batchscore.monitor.profile import Profile
from batchscore.physical.task_files import read_task_file, write_task_file
from batchscore.sinks.checkpoints import checkpoint_if_due
from batchscore.sinks.storage import delta_table, storage_options

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("job", pa.string()),
        ("run_date", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("kind", pa.string()),
        ("feature", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("baseline", pa.string()),
        ("threshold", pa.float64()),
        ("alert", pa.bool_()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)
UNDATED = "all"


@dataclass(frozen=True)
class RunKey:
    job: str
    run_date: str | None
    run_id: str

    @property
    def date_name(self) -> str:
        return self.run_date or UNDATED


def side_dir(table: str, what: str, job: str) -> str:
    return f"{table.rstrip('/')}/_batchscore/{what}/{job}"


def previous_profiles(table: str, key: RunKey) -> dict[str, Profile]:
    """The profiles of the job's latest committed run before this run date ({} when none: the
    first run, an undated job, or a table without it)."""
    if key.run_date is None:
        return {}
    dates = _run_dates(table, key.job)
    earlier = [d for d in dates if d < key.run_date]
    if not earlier:
        return {}
    body = read_task_file(side_dir(table, "runs", key.job), max(earlier)) or {}
    return {m: Profile.from_json(p) for m, p in (body.get("profiles") or {}).items()}


Previous = Future[dict[str, Profile]] | None


def prefetch_previous(table: str | None, key: RunKey) -> Previous:
    """`previous_profiles`, read in a thread while the scoring job runs (the driver only waits
    on Spark then; its `result()` raises what the read raised); None without a table."""
    return None if table is None else _READER.submit(previous_profiles, table, key)


_READER = ThreadPoolExecutor(1, thread_name_prefix="batchscore-previous-run")


def _run_dates(table: str, job: str) -> list[str]:
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = delta_table(table)
    except TableNotFoundError:
        return []
    data = dt.to_pyarrow_table(columns=["run_date"], partitions=[("job", "=", job)])
    return sorted({d for d in data.column("run_date").to_pylist() if d is not None})


RUN_KINDS = ("feature", "prediction", "comparison")
"""The kinds a scoring run writes (and a rerun replaces); `evaluate` owns `evaluation` rows."""


def record_run(
    table: str,
    key: RunKey,
    rows: Sequence[MetricRow],
    profiles: Mapping[str, Profile],
    trainings: Mapping[str, Profile | None],
    *,
    computed_at: datetime,
    pairs: Sequence[tuple[str, str]] = (),
) -> int:
    """Replace this (job, run date)'s rows with `rows`; store its profiles and histograms
    (`pairs`: (challenger, champion) score distributions too). Returns the table version."""
    kinds = ", ".join(f"'{k}'" for k in RUN_KINDS)
    predicate = f"{this_run(key.job, key.run_date)} AND kind IN ({kinds})"
    with ThreadPoolExecutor(1, thread_name_prefix="batchscore-side-files") as side:
        # the files' JSON is encoded while delta-rs commits the rows (it releases the GIL)
        stored = side.submit(_store_side_files, table, key, profiles, trainings, pairs)
        version = replace_rows(table, _arrow(key, rows, computed_at), predicate)
        stored.result()
    return version


def replace_rows(table: str, data: pa.Table, predicate: str) -> int:
    """Delete the rows matching `predicate` and append `data` (rows of SCHEMA), in one
    commit; the first write creates the table, partitioned by job. Returns the version."""
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import TableNotFoundError

    options = storage_options(table)
    try:
        existing: DeltaTable | None = delta_table(table, fresh=True)  # written through
    except TableNotFoundError:
        existing = None
    try:
        if existing is None:
            if "://" not in table:
                Path(table).mkdir(parents=True, exist_ok=True)
            write_deltalake(
                table, data, mode="append", partition_by=["job"], storage_options=options
            )
        else:  # the opened table itself: delta-rs then neither reopens it nor needs to after
            write_deltalake(existing, data, mode="overwrite", predicate=predicate)
    except Exception as exc:  # delta-rs errors: one line for the user
        raise SinkError(
            f"Monitoring table {table} refused the rows: {first_line(exc)[:300]}. The "
            "predictions are committed; fix the table (or point monitoring.table elsewhere) "
            "and rerun with --force to record the metrics."
        ) from None
    version = int((existing or delta_table(table)).version())
    checkpoint_if_due(table, version)
    return version


def run_summary(
    table: str, version: int, rows: int, on_alert: str, alerts: Sequence[MetricRow]
) -> dict[str, Any]:
    """The run summary's `monitoring` entry (RunResult.monitoring, --summary-json)."""
    return {
        "table": table,
        "version": version,
        "rows": rows,
        "on_alert": on_alert,
        "alerts": [
            {
                "model": r.model,
                "feature": r.feature,
                "metric": r.metric,
                "value": r.value,
                "threshold": r.threshold,
                "baseline": r.baseline,
            }
            for r in alerts
        ],
    }


def this_run(job: str, run_date: str | None) -> str:
    """The predicate of one (job, run date)'s rows (SQL string literals escaped)."""
    quoted = job.replace("'", "''")
    if run_date is None:
        return f"job = '{quoted}' AND run_date IS NULL"
    return f"job = '{quoted}' AND run_date = '{run_date.replace(chr(39), chr(39) * 2)}'"


def _arrow(key: RunKey, rows: Sequence[MetricRow], computed_at: datetime) -> pa.Table:
    n = len(rows)
    columns = {
        "run_id": [key.run_id] * n,
        "job": [key.job] * n,
        "run_date": [key.run_date] * n,
        "model": [r.model for r in rows],
        "model_version": [r.model_version for r in rows],
        "kind": [r.kind for r in rows],
        "feature": [r.feature for r in rows],
        "metric": [r.metric for r in rows],
        "value": [r.value for r in rows],
        "baseline": [r.baseline for r in rows],
        "threshold": [r.threshold for r in rows],
        "alert": [r.alert for r in rows],
        "computed_at": [computed_at] * n,
    }
    return pa.table(columns, schema=SCHEMA)


def _store_side_files(
    table: str,
    key: RunKey,
    profiles: Mapping[str, Profile],
    trainings: Mapping[str, Profile | None],
    pairs: Sequence[tuple[str, str]] = (),
) -> None:
    name = key.date_name
    runs = side_dir(table, "runs", key.job)
    write_task_file(
        runs,
        name,
        {"run_id": key.run_id, "run_date": key.run_date, "profiles": profiles_json(profiles)},
    )
    drawn = {m: histograms(p, trainings.get(m)) for m, p in profiles.items()}
    write_task_file(
        side_dir(table, "histograms", key.job),
        name,
        {
            "run_id": key.run_id,
            "job": key.job,
            "run_date": key.run_date,
            "models": drawn,
            "challengers": challenger_histograms(profiles, pairs),
        },
    )
