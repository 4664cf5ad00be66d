"""Progress of the Spark jobs a run starts, on stderr: `batchscore run` shows it, `--quiet` not.

A daemon thread polls Spark's `StatusTracker` every `POLL_SECONDS` (a handful of calls into the
JVM per poll, nothing on the executors) for the jobs started since the reporter began, and for
each of their stages the tasks done out of the total. On a terminal, rich draws one bar per
running stage; elsewhere (a scheduler's log) each stage gets one line once it ends:

    stage 3: 12/12 tasks, 4.1 s
    stage 5: 3/12 tasks, 1 failed, 2.0 s

The reporter is a context manager: leaving it (the run committed, or failed) stops the thread,
reads the tracker once more (stages that ended in the last poll interval) and stops the live
display, before the caller prints its summary or its error. Only stderr is written, so stdout
keeps the summary and nothing else. Anything the tracker raises (a SparkContext stopped under
it) is ignored: progress must never fail a run.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, NamedTuple, Protocol, TypeVar

POLL_SECONDS = 0.5
_T = TypeVar("_T")
_ENDED = frozenset({"SUCCEEDED", "FAILED"})


class JobView(NamedTuple):
    job_id: int
    stage_ids: tuple[int, ...]
    status: str


class StageView(NamedTuple):
    stage_id: int
    tasks: int
    done: int
    active: int
    failed: int
    submitted_at: float | None
    """Wall-clock seconds (time.time()) when Spark submitted the stage; None if it never was
    (a stage skipped because its shuffle output existed) or Spark does not say."""


class StatusSource(Protocol):
    """The few questions the reporter asks Spark (a fake one in tests)."""

    def active_job_ids(self) -> list[int]: ...

    def known_job_ids(self) -> list[int]: ...

    def job(self, job_id: int) -> JobView | None: ...

    def stage(self, stage_id: int) -> StageView | None: ...


class SparkStatus:
    """`StatusSource` over a SparkContext's status tracker, asked through its Java object
    (`JavaSparkStatusTracker`): each attribute is one call into the JVM, so a job's stage ids
    (fixed once it is submitted) and a stage's submission time are read once, and pyspark's
    StageInfo (seven calls, no submission time) is not used."""

    def __init__(self, tracker: Any) -> None:
        self._java = tracker._jtracker
        self._stage_ids: dict[int, tuple[int, ...]] = {}
        self._submitted: dict[int, float] = {}

    def active_job_ids(self) -> list[int]:
        return [int(i) for i in self._java.getActiveJobIds()]

    def known_job_ids(self) -> list[int]:
        """Jobs without a job group the tracker still holds (up to spark.ui.retainedJobs)."""
        return [int(i) for i in self._java.getJobIdsForGroup(None)]

    def job(self, job_id: int) -> JobView | None:
        info = self._java.getJobInfo(job_id)
        if info is None:
            return None
        stages = self._stage_ids.get(job_id)
        if stages is None:
            stages = self._stage_ids[job_id] = tuple(int(s) for s in info.stageIds())
        return JobView(job_id, stages, str(info.status()))

    def stage(self, stage_id: int) -> StageView | None:
        info = self._java.getStageInfo(stage_id)
        if info is None:
            return None
        submitted = self._submitted.get(stage_id)
        if submitted is None:
            millis = int(info.submissionTime())  # 0 until the stage is submitted
            if millis > 0:
                submitted = self._submitted[stage_id] = millis / 1000
        return StageView(
            stage_id,
            int(info.numTasks()),
            int(info.numCompletedTasks()),
            int(info.numActiveTasks()),
            int(info.numFailedTasks()),
            submitted,
        )


_TRACKED: list[tuple[Any, SparkStatus]] = []
"""The SparkContext last asked about and its status source (one StatusTracker per context)."""


def active_status() -> tuple[int, StatusSource] | None:
    """(identity, status source) of the active SparkContext, None while there is none."""
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return None
    if not _TRACKED or _TRACKED[0][0] is not sc:
        _TRACKED[:] = [(sc, SparkStatus(sc.statusTracker()))]
    return id(sc), _TRACKED[0][1]


# ---------------------------------------------------------------- what is shown


@dataclass
class StageLine:
    """One stage as shown: running (a bar on a terminal) or ended (one line)."""

    job_id: int
    stage_id: int
    tasks: int
    done: int
    failed: int
    seconds: float

    def text(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        done = min(self.done, self.tasks)
        return f"stage {self.stage_id}: {done}/{self.tasks} tasks{failed}, {self.seconds:.1f} s"


class Renderer(Protocol):
    def running(self, stage: StageLine) -> None: ...

    def ended(self, stage: StageLine) -> None: ...

    def close(self) -> None: ...


class LineRenderer:
    """One line per stage when it ends: for logs, where bars would be noise."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def running(self, stage: StageLine) -> None:
        pass

    def ended(self, stage: StageLine) -> None:
        self._stream.write(stage.text() + "\n")
        self._stream.flush()

    def close(self) -> None:
        pass


class RichRenderer:
    """A bar per running stage (job and stage ids, tasks done/total, time), on a terminal.
    Ended stages stay as one line above the bars; the bars vanish when the run ends. The live
    display starts with the first stage, after the JVM has printed its start-up lines (which
    rich cannot route above the bars)."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        stdout = sys.stdout
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks"),
            TimeElapsedColumn(),
            console=Console(file=stream),
            transient=True,
            refresh_per_second=4,
            # stdout on the same terminal (a backfill's per-date lines) goes above the bars
            redirect_stdout=bool(getattr(stdout, "isatty", lambda: False)()),
            redirect_stderr=False,
        )
        self._tasks: dict[int, Any] = {}
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._progress.start()

    def running(self, stage: StageLine) -> None:
        self._start()
        task = self._tasks.get(stage.stage_id)
        if task is None:
            self._tasks[stage.stage_id] = self._progress.add_task(
                f"job {stage.job_id} stage {stage.stage_id}",
                total=stage.tasks,
                completed=stage.done,
            )
        else:
            self._progress.update(task, total=stage.tasks, completed=stage.done)

    def ended(self, stage: StageLine) -> None:
        self._start()
        task = self._tasks.pop(stage.stage_id, None)
        if task is not None:
            self._progress.remove_task(task)
        self._progress.console.print(stage.text(), markup=False, highlight=False, style="dim")

    def close(self) -> None:
        if self._started:
            self._progress.stop()


# ---------------------------------------------------------------- the stage book


class StageBook:
    """Which jobs and stages this run started, and which of them were already shown as ended.

    Job ids grow by one per job in a SparkContext, so the jobs of this run are those from the
    first id unknown when the reporter began (`first_job`) on: probing ids upward finds jobs
    that started and ended between two polls, and jobs in a job group, which the tracker's
    job list leaves out.
    """

    def __init__(self, source: StatusSource, renderer: Renderer, first_job: int) -> None:
        self._source = source
        self._renderer = renderer
        self._next_job = first_job
        self._open_jobs: list[int] = []
        self._shown: set[int] = set()
        self._seen: dict[int, float] = {}

    @staticmethod
    def first_new_job(source: StatusSource) -> int:
        """The id the next job will get: past every job the tracker knows now."""
        known = [*source.known_job_ids(), *source.active_job_ids()]
        first = max(known, default=-1) + 1
        while source.job(first) is not None:  # jobs in a group are not in known_job_ids
            first += 1
        return first

    def poll(self, *, final: bool = False) -> None:
        """Read the tracker once; show running stages, and ended ones once each. `final`: the
        run is over, so a stage still running belongs to a job that was cancelled or failed."""
        self._discover_jobs()
        still_open = []
        for job_id in self._open_jobs:
            job = self._source.job(job_id)
            if job is None:
                continue
            ended = final or job.status in _ENDED
            for stage_id in job.stage_ids:
                if stage_id not in self._shown:
                    self._show_stage(job_id, stage_id, job_ended=ended)
            if not ended:
                still_open.append(job_id)
        self._open_jobs = still_open

    def _discover_jobs(self) -> None:
        highest = max(self._source.active_job_ids(), default=-1)
        job_id = self._next_job
        while job_id <= highest or self._source.job(job_id) is not None:
            self._open_jobs.append(job_id)
            job_id += 1
        self._next_job = job_id

    def _show_stage(self, job_id: int, stage_id: int, *, job_ended: bool) -> None:
        view = self._source.stage(stage_id)
        if view is None:
            return
        started = view.active or view.done or view.failed or view.submitted_at is not None
        if not started:
            if job_ended:  # skipped: its output existed already
                self._shown.add(stage_id)
            return
        now = time.time()
        first_seen = self._seen.setdefault(stage_id, now)
        since = view.submitted_at if view.submitted_at is not None else first_seen
        line = StageLine(
            job_id, stage_id, view.tasks, view.done, view.failed, max(0.0, now - since)
        )
        complete = view.tasks > 0 and view.done >= view.tasks and not view.active
        if complete or job_ended:
            self._shown.add(stage_id)
            self._renderer.ended(line)
        else:
            self._renderer.running(line)


# ---------------------------------------------------------------- the reporter


class SparkProgress:
    """`with SparkProgress(): run...` shows the progress of the Spark jobs started inside.

    It follows whichever SparkContext is active (the run may create it after the reporter
    started). `stream`: stderr by default; rich bars when it is a terminal, one line per ended
    stage otherwise. `enabled=False` makes it a no-op (`--quiet`).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        enabled: bool = True,
        interval: float = POLL_SECONDS,
        status: Callable[[], tuple[int, StatusSource] | None] = active_status,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._interval = interval
        self._status = status
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renderer: Renderer | None = None
        self._context: int | None = None
        self._book: StageBook | None = None
        self._first_job = 0

    def __enter__(self) -> SparkProgress:
        if not self._enabled:
            return self
        self._renderer = _renderer_for(self._stream)
        current = self._safe(self._status)
        if current is not None:
            self._context = current[0]
            self._first_job = self._safe(lambda: StageBook.first_new_job(current[1])) or 0
        self._thread = threading.Thread(target=self._loop, name="batchscore-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None or self._renderer is None:
            return
        self._stop.set()
        self._thread.join(timeout=max(5.0, 4 * self._interval))
        self._thread = None
        if exc_type is not KeyboardInterrupt:
            self._safe(lambda: self._poll(final=True))
        self._renderer.close()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._safe(self._poll)

    def _poll(self, *, final: bool = False) -> None:
        current = self._status()
        if current is None or self._renderer is None:
            return
        context, source = current
        if self._book is None or context != self._context:
            first = self._first_job if context == self._context else 0
            self._context = context
            self._book = StageBook(source, self._renderer, first)
        self._book.poll(final=final)

    @staticmethod
    def _safe(call: Callable[[], _T]) -> _T | None:
        try:
            return call()
        except Exception:  # progress must never fail the run
            return None


def _renderer_for(stream: IO[str]) -> Renderer:
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return RichRenderer(stream)
    return LineRenderer(stream)


def stage_lines(text: str) -> list[str]:
    """The progress lines in `text` (what tests and log readers look for)."""
    return [line for line in text.splitlines() if _is_stage_line(line)]


def without_stage_lines(text: str) -> str:
    """`text` without progress lines: the errors and warnings a run printed."""
    return "\n".join(line for line in text.splitlines() if not _is_stage_line(line))


def _is_stage_line(line: str) -> bool:
    head, sep, rest = line.partition(": ")
    return bool(sep) and head.startswith("stage ") and head[6:].isdigit() and " tasks" in rest
