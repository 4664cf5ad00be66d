"""Progress of `batchscore run` on stderr: one line per Spark stage in logs, bars on a terminal,
nothing with --quiet, never on stdout, and no thread left behind."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from batchscore.cli import run_cli
from batchscore.jobs.progress import (
    JobView,
    LineRenderer,
    SparkProgress,
    StageBook,
    StageLine,
    StageView,
    StatusSource,
    stage_lines,
    without_stage_lines,
)

RUN_DATE = "2026-11-21"
STAGE_LINE = re.compile(r"^stage \d+: \d+/\d+ tasks(, \d+ failed)?, \d+\.\d s$")


class FakeStatus:
    """A StatusTracker whose jobs and stages a test moves along by hand."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobView] = {}
        self.stages: dict[int, StageView] = {}
        self.active: list[int] = []

    def active_job_ids(self) -> list[int]:
        return list(self.active)

    def known_job_ids(self) -> list[int]:
        return list(self.jobs)

    def job(self, job_id: int) -> JobView | None:
        return self.jobs.get(job_id)

    def stage(self, stage_id: int) -> StageView | None:
        return self.stages.get(stage_id)

    def start(self, job_id: int, stages: dict[int, int]) -> None:
        self.jobs[job_id] = JobView(job_id, tuple(stages), "RUNNING")
        self.active.append(job_id)
        for stage_id, tasks in stages.items():
            self.stages[stage_id] = StageView(stage_id, tasks, 0, 0, 0, None)

    def tasks(self, stage_id: int, *, done: int, active: int = 0, failed: int = 0) -> None:
        view = self.stages[stage_id]
        self.stages[stage_id] = view._replace(
            done=done, active=active, failed=failed, submitted_at=view.submitted_at or 1.0
        )

    def end(self, job_id: int, status: str = "SUCCEEDED") -> None:
        self.jobs[job_id] = self.jobs[job_id]._replace(status=status)
        self.active.remove(job_id)


class Recorder:
    def __init__(self) -> None:
        self.runs: list[StageLine] = []
        self.ends: list[StageLine] = []

    def running(self, stage: StageLine) -> None:
        self.runs.append(stage)

    def ended(self, stage: StageLine) -> None:
        self.ends.append(stage)

    def close(self) -> None:
        pass


def test_stage_book_shows_each_stage_once_and_skips_stages_that_never_ran() -> None:
    fake = FakeStatus()
    fake.start(0, {0: 1})
    fake.tasks(0, done=1)
    fake.end(0)  # a job from before the run
    source: StatusSource = fake
    first = StageBook.first_new_job(source)
    assert first == 1
    shown = Recorder()
    book = StageBook(source, shown, first)
    fake.start(1, {1: 4, 2: 2})  # stage 2: skipped (its shuffle output existed)
    fake.tasks(1, done=1, active=3)
    book.poll()
    assert [(s.stage_id, s.done, s.tasks) for s in shown.runs] == [(1, 1, 4)]
    fake.tasks(1, done=4)
    book.poll()
    book.poll()
    fake.end(1)
    fake.start(2, {3: 3})  # starts and fails between two polls
    fake.tasks(3, done=1, failed=1)
    fake.end(2, "FAILED")
    book.poll()
    assert [s.text().split(",")[0] for s in shown.ends] == [
        "stage 1: 4/4 tasks",
        "stage 3: 1/3 tasks",
    ]
    assert shown.ends[1].failed == 1 and ", 1 failed, " in shown.ends[1].text()
    assert all(STAGE_LINE.match(s.text()) for s in shown.ends)


def test_reporter_writes_lines_to_a_log_and_stops_its_thread() -> None:
    fake = FakeStatus()
    stream = io.StringIO()
    with SparkProgress(stream, interval=0.01, status=lambda: (1, fake)):
        fake.start(0, {0: 2})
        fake.tasks(0, done=2)
        fake.end(0)
        fake.start(1, {1: 3})
        fake.tasks(1, done=2, active=1)  # still running when the run fails
    assert not [t for t in threading.enumerate() if t.name == "batchscore-progress"]
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["stage 0: 2/2 tasks", "stage 1: 2/3 tasks"]
    assert stage_lines(stream.getvalue()) == lines
    assert without_stage_lines(stream.getvalue() + "error: boom\n") == "error: boom"


def test_reporter_survives_a_tracker_that_fails_and_quiet_writes_nothing() -> None:
    def broken() -> tuple[int, StatusSource]:
        raise RuntimeError("SparkContext stopped")

    stream = io.StringIO()
    with SparkProgress(stream, interval=0.01, status=broken):
        pass
    fake = FakeStatus()
    with SparkProgress(stream, enabled=False, status=lambda: (1, fake)):
        fake.start(0, {0: 1})
        fake.tasks(0, done=1)
        fake.end(0)
    assert stream.getvalue() == ""


def test_terminal_gets_bars_and_keeps_ended_stages_as_lines() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = FakeStatus()
    stream = Terminal()
    with SparkProgress(stream, interval=0.01, status=lambda: (1, fake)):
        fake.start(0, {0: 8})
        fake.tasks(0, done=3, active=5)
        threading.Event().wait(0.1)
        fake.tasks(0, done=8)
        fake.end(0)
    assert "stage 0: 8/8 tasks" in stream.getvalue()
    assert not [t for t in threading.enumerate() if t.name == "batchscore-progress"]


def test_line_renderer_flushes_each_line() -> None:
    stream = io.StringIO()
    LineRenderer(stream).ended(StageLine(2, 3, 12, 12, 0, 4.12))
    assert stream.getvalue() == "stage 3: 12/12 tasks, 4.1 s\n"


@pytest.mark.spark
def test_run_prints_stage_lines_to_stderr_and_quiet_prints_none(
    job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    spec = str(job / "conf" / "demo.yaml")
    summary = tmp_path / "summary.json"
    capsys.readouterr()
    assert run_cli(["run", spec, "--run-date", RUN_DATE, "--summary-json", str(summary)]) == 0
    captured = capsys.readouterr()
    lines = stage_lines(captured.err)
    assert lines, captured.err
    assert all(STAGE_LINE.match(line) for line in lines), lines
    assert without_stage_lines(captured.err).strip() == ""
    assert "wrote 9,000 prediction rows" in captured.out
    assert not stage_lines(captured.out)
    assert json.loads(summary.read_text())["rows"] == 9_000
    assert not [t for t in threading.enumerate() if t.name == "batchscore-progress"]

    assert run_cli(["run", spec, "--run-date", RUN_DATE, "--force", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "wrote 9,000 prediction rows" in captured.out
