"""What a run returns (`bs.run`, `batchscore run`). Plain data, importable without Spark."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["committed", "skipped", "empty"]


@dataclass(frozen=True)
class RunResult:
    """committed: one new table version; skipped: this (job, run date) was already committed;
    empty: the source selection had no rows, so nothing was written."""

    run_id: str
    job: str
    run_date: str | None
    status: RunStatus
    rows: int
    table_version: int | None
    output_path: str
    seconds: float
    models: dict[str, str] = field(default_factory=dict)
    message: str = ""
    quarantined: int = 0
    """Fact rows that a join with `on_missing: quarantine` kept out (see output.quarantine)."""
    compile_seconds: float = 0.0
    """Time this run spent compiling tree models on the driver (0 when all came from the cache)."""
    compiled: str = ""
    """One phrase on the compiled tree kernels ("" when none)."""
    profile: Any = None
    """`batchscore.physical.profile.RunProfile` of a run made with profile=True, else None."""
    nulls: dict[str, dict[str, int]] = field(default_factory=dict)
    """Rows written with a null prediction, per model and reason (physical.null_counts);
    models without any are left out. Known only after the commit, so the table's commit
    metadata cannot carry them: they are in the summary and `--summary-json`."""

    violations: dict[str, int] = field(default_factory=dict)
    """Rows breaking each validation rule that had any (null_rate rules: 1 when broken)."""
    warnings: tuple[str, ...] = ()
    """One line per broken `warn` validation rule."""
    monitoring: dict[str, Any] = field(default_factory=dict)
    """The monitoring table's record of this run: table, version, rows, alerts (worst first)."""
    alert_line: str = ""
    """One line naming the models and features whose drift passed a threshold ("" when none)."""
    fail_on_alert: bool = False
    """monitoring.on_alert is fail: an alert makes the CLI exit 3 (after the commits)."""
    failed_tasks: int | None = None
    """Task attempts of this run's Spark jobs that failed and were retried (a lost executor, a
    task error under spark.task.maxFailures; physical.task_failures); None when not known
    (no Spark job ran, or Spark Connect)."""

    @property
    def exit_code(self) -> int:
        """What `batchscore run` exits with: 3 for a drift alert under on_alert: fail."""
        return 3 if self.alert_line and self.fail_on_alert else 0

    @property
    def null_rows(self) -> int:
        return sum(sum(r.values()) for r in self.nulls.values())

    def to_json(self) -> dict[str, Any]:
        """What `batchscore run --summary-json` writes."""
        return {
            "run_id": self.run_id,
            "job": self.job,
            "run_date": self.run_date,
            "status": self.status,
            "rows": self.rows,
            "quarantined": self.quarantined,
            "null_predictions": {m: dict(r) for m, r in self.nulls.items()},
            "null_rows": self.null_rows,
            "table_version": self.table_version,
            "output_path": self.output_path,
            "seconds": round(self.seconds, 3),
            "models": dict(self.models),
            "message": self.message,
            "validation": dict(self.violations),
            "warnings": list(self.warnings),
            "monitoring": dict(self.monitoring),
            "alert": self.alert_line,
            "exit_code": self.exit_code,
            "failed_tasks": self.failed_tasks,
        }

    @property
    def committed(self) -> bool:
        return self.status == "committed"

    def summary(self) -> str:
        head = f"Job '{self.job}'" + (f" run date {self.run_date}" if self.run_date else "")
        if self.status == "skipped":
            return (
                f"{head}: already committed (table version {self.table_version}); nothing to do. "
                "Use --force to score again."
            )
        if self.status == "empty":
            return f"{head}: {self.message} Nothing to score; no commit made."
        models = ", ".join(f"{k}@{v}" for k, v in self.models.items())
        held = f"; {self.quarantined:,} row(s) quarantined" if self.quarantined else ""
        compiled = f"; {self.compiled}" if self.compiled else ""
        text = (
            f"{head}: wrote {self.rows:,} prediction rows to {self.output_path} "
            f"(Delta version {self.table_version}) in {self.seconds:.1f} s; run {self.run_id}; "
            f"models {models}{held}{compiled}"
        )
        for model, reasons in self.nulls.items():
            text += f"; {_null_phrase(model, reasons)}"
        if self.failed_tasks:
            plural = "s" if self.failed_tasks != 1 else ""
            text += f"; task retries: {self.failed_tasks:,} failed attempt{plural}"
        if self.monitoring:
            text += f"\n{_monitoring_phrase(self.monitoring)}"
        for line in self.warnings:
            text += f"\nWarning: {line}"
        if self.alert_line:
            text += f"\n{self.alert_line}"
        if self.profile is not None:
            text += "\n" + "\n".join(self.profile.lines())
        return text


def _null_phrase(model: str, reasons: dict[str, int]) -> str:
    """`stars_lr: 680 rows with null predictions (NaN/inf in users.u_03)`."""
    total = sum(reasons.values())
    if len(reasons) == 1:
        why = next(iter(reasons))
    else:
        why = ", ".join(f"{n:,} {reason}" for reason, n in reasons.items())
    return f"{model}: {total:,} row{'s' if total != 1 else ''} with null predictions ({why})"


def _monitoring_phrase(record: dict[str, Any]) -> str:
    """`Monitoring: 412 metrics (2 alerts) in out/monitoring version 7`."""
    alerts = len(record.get("alerts") or [])
    plural = "s" if alerts != 1 else ""
    return (
        f"Monitoring: {record.get('rows', 0):,} metrics ({alerts} alert{plural}) "
        f"in {record.get('table')} (version {record.get('version')})"
    )
