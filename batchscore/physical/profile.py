"""`batchscore run --profile`: where a run's time goes, stage by stage.

The scoring task runs inside the Delta writer's Python worker, so it sees every stage of a
task from its own loop: the time it waits for the next Arrow batch is everything upstream
(scan, joins, the transfer into the Python worker), then feature assembly, each model's (or
batched group's) scoring, building the output columns, and, between handing a batch to the
writer and being asked for the next, the Parquet write with its statistics. Each task writes
its totals as one small JSON file under `<table>/_batchscore/profile/<run id>/` (a place every
executor can reach, like the task file; readers and vacuum skip `_` folders); the driver adds
them up after the commit and deletes the folder. Task seconds are summed over tasks, so with
several tasks in parallel they exceed the wall time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from batchscore.physical.task_files import (
    read_task_files,
    remove_task_files,
    task_dir,
    write_task_file,
)

UPSTREAM = "scan + joins + transfer into Python"
ASSEMBLE = "feature assembly"
OUTPUT = "output columns"
WRITE = "Parquet write + file stats"
MONITOR = "monitoring (profiles of inputs and outputs)"
VALIDATE = "validation (warn rules)"


def profile_dir(table_path: str, run_id: str) -> str:
    return task_dir(table_path, "profile", run_id)


@dataclass
class StageClock:
    """Seconds per stage of one task, in the order stages were first seen."""

    seconds: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    batches: int = 0

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def dump(self, folder: str) -> None:
        body = {"seconds": self.seconds, "rows": self.rows, "batches": self.batches}
        write_task_file(folder, uuid.uuid4().hex, body)


@dataclass(frozen=True)
class RunProfile:
    """Driver wall seconds per phase and executor task seconds per stage, summed."""

    driver: dict[str, float]
    tasks: dict[str, float]
    n_tasks: int
    rows: int

    def lines(self) -> list[str]:
        driver = "; ".join(f"{k} {v:.2f} s" for k, v in self.driver.items())
        out = [f"Profile: driver (wall): {driver}"]
        total = sum(self.tasks.values())
        if self.n_tasks:
            out.append(
                f"  executors ({self.n_tasks} task(s), {self.rows:,} rows; task seconds summed "
                "over tasks):"
            )
            for stage, sec in sorted(self.tasks.items(), key=lambda kv: -kv[1]):
                share = 100.0 * sec / total if total else 0.0
                out.append(f"    {stage:<40} {sec:9.2f} s  {share:5.1f}%")
        return out


def collect(folder: str, driver: dict[str, float]) -> RunProfile:
    """Add up the tasks' files under `folder`, then delete it."""
    tasks: dict[str, float] = {}
    bodies = read_task_files(folder)
    for body in bodies:
        for stage, sec in body.get("seconds", {}).items():
            tasks[stage] = tasks.get(stage, 0.0) + float(sec)
    remove_task_files(folder)
    rows = sum(int(body.get("rows", 0)) for body in bodies)
    return RunProfile(driver, tasks, len(bodies), rows)
