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
        if self.profile is not None:
            text += "\n" + "\n".join(self.profile.lines())
        return text
