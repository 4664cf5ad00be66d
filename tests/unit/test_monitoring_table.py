"""The monitoring table's commits (jobs.monitoring.replace_rows): one (job, date)'s rows replaced
in one commit, and a checkpoint every CHECKPOINT_INTERVAL commits, as for predictions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from batchscore.jobs.monitoring import SCHEMA, replace_rows, this_run
from batchscore.sinks.checkpoints import CHECKPOINT_INTERVAL


def _rows(run_date: str, value: float) -> pa.Table:
    row = {name: None for name in SCHEMA.names}
    row |= {"run_id": "r", "job": "j", "run_date": run_date, "kind": "prediction"}
    row |= {"metric": "mean", "value": value, "alert": False, "computed_at": datetime.now(UTC)}
    return pa.Table.from_pylist([row], schema=SCHEMA)


def test_a_rerun_replaces_its_rows_and_every_tenth_commit_checkpoints(tmp_path: Path) -> None:
    table = str(tmp_path / "monitoring")
    for version in range(CHECKPOINT_INTERVAL + 1):
        day = "2026-11-01" if version % 2 else "2026-11-02"
        assert replace_rows(table, _rows(day, float(version)), this_run("j", day)) == version
    log = tmp_path / "monitoring" / "_delta_log"
    checkpoints = [p.name for p in log.glob("*.checkpoint.parquet")]
    assert checkpoints == [f"{CHECKPOINT_INTERVAL:020d}.checkpoint.parquet"]
    kept = DeltaTable(table).to_pyarrow_table().sort_by("run_date").to_pylist()
    assert [(r["run_date"], r["value"]) for r in kept] == [
        ("2026-11-01", 9.0),
        ("2026-11-02", 10.0),
    ]
