"""The benchmark harness: timing, peak memory, and the RESULTS.md table.

A scenario module in bench/ exposes `run(ctx: Context) -> list[Row]`; `bench/run.py` lists the
modules in SCENARIOS. Every row is one variant of one scenario, timed as the median of
`ctx.repeats` runs in this process, so ratios compare like with like.
"""

from __future__ import annotations

import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"


@dataclass
class Context:
    quick: bool
    repeats: int
    workdir: Path
    spark: Any = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    scenario: str
    variant: str
    rows: int
    seconds: float
    baseline: str = ""
    baseline_seconds: float | None = None
    extra: str = ""
    peak_rss_mb: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def ratio(self) -> float | None:
        """How many times faster than the baseline (>1 is faster)."""
        if self.baseline_seconds is None or self.seconds <= 0:
            return None
        return self.baseline_seconds / self.seconds


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of `repeats` calls, and the last call's result."""
    seconds, result, _ = timed_runs(fn, repeats)
    return seconds, result


REPEAT_BUDGET_S = 6.0  # Spark variants stop repeating once their runs took this long together

SLOW_SAMPLE = 4
"""The slow baselines (the predict_batch_udf peers, `strategy: native` in the tree job) score
the rows whose id is a multiple of this: they took most of `make bench` otherwise. A peer's
time on those rows is compared with batchscore's on all of them, unscaled, so every ratio
against a peer is a lower bound: the k=32 GLM peer took 153 s on a quarter of the rows and
196 s on all, mostly fixed costs, which scaling by rows would have multiplied. `strategy:
native` (batchscore's own job, LightGBM's predictor: time proportional to rows) is `scaled`."""


def scaled(seconds: float, rows_run: int, rows_full: int) -> float:
    """The seconds a variant that ran on `rows_run` rows would take on `rows_full` at its rate."""
    return seconds * rows_full / max(rows_run, 1)


def timed_runs(
    fn: Callable[[], Any],
    repeats: int,
    budget_s: float | None = None,
    first: float | None = None,
) -> tuple[float, Any, int]:
    """Median wall time of up to `repeats` calls, the last call's result, and the number of calls.

    With `budget_s`, calls stop early once they have taken that many seconds together (at least
    one call is made): a slow variant then gets fewer runs behind its median. `first` is the time
    of a call already made (a pilot), counted as one of them.
    """
    times: list[float] = [] if first is None else [first]
    result = None
    while len(times) < max(1, repeats) and (budget_s is None or sum(times) < budget_s):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result, len(times)


def interleaved(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    after: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Median wall time of each variant over `repeats` rounds (see interleaved_runs)."""
    return medians(interleaved_runs(variants, repeats, after))


def medians(runs: dict[str, list[float]]) -> dict[str, float]:
    """Each variant's median of its `interleaved_runs` times."""
    return {name: statistics.median(values) for name, values in runs.items()}


def interleaved_runs(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    after: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Each variant's wall times over `repeats` rounds, in round order, the variants run in turn
    within a round: a slow spell of the shared machine then hits every variant alike, where
    back-to-back runs of one variant let it land on one of them (two runs of one plan under two
    names differed by 1.19x). Every other round runs the variants in reverse, so none always
    runs first or right after a given one (the JVM still warming up favours whatever runs
    later: the same Spark write took 1.6, 0.9, 0.7, 0.66 s in its first rounds). `after(name)`
    runs untimed after a variant's last call."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    rounds = max(1, repeats)
    for round_ in range(rounds):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in order:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
            if after is not None and round_ == rounds - 1:
                after(name)
    return times


def paired_ratio(times: list[float], baseline: list[float]) -> float:
    """The median of per-round ratios: a slow spell that hits one round hits both its runs."""
    return statistics.median(t / b for t, b in zip(times, baseline, strict=True))


class MemorySampler:
    """Peak resident memory of this process and every process under it: the Spark JVM and the
    Python workers it forks.

    getrusage sees only this process and children that have exited, so a live JVM and its
    workers, where Spark's memory is, were invisible to it. A daemon thread sums the RSS of the
    process tree every `interval` seconds; pages shared between forked workers count once per
    process, so the figure is an upper bound.
    """

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    def start(self) -> MemorySampler:
        """Sample until the process exits (a daemon thread: the bench run owns it throughout)."""
        self._thread.start()
        return self

    def reset(self) -> None:
        """Start a new peak (at the current total): each scenario reports its own."""
        self._peak = self._tree_rss()

    def peak_mb(self) -> float:
        self._peak = max(self._peak, self._tree_rss())
        return self._peak / 2**20

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            self._peak = max(self._peak, self._tree_rss())

    def _tree_rss(self) -> int:
        import psutil

        total = 0
        for proc in [self._process, *self._process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that exited between the listing and the read
        return total


_SAMPLER: MemorySampler | None = None


def start_memory_sampler() -> MemorySampler:
    """Start the process-tree sampler that `peak_rss_mb` reads (bench/run.py does, once)."""
    global _SAMPLER
    if _SAMPLER is None:
        _SAMPLER = MemorySampler().start()
    return _SAMPLER


def peak_rss_mb() -> float:
    """Peak resident memory of the process tree since the scenario began (MB), or, with no
    sampler running (a scenario run on its own), this process's and its finished children's."""
    if _SAMPLER is not None:
        return _SAMPLER.peak_mb()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def machine() -> str:
    import os

    try:
        import psutil  # type: ignore[import-not-found]

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB"
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory} memory, Python {python}"


def versions() -> str:
    from importlib.metadata import version

    names = ["pyspark", "deltalake", "pyarrow", "numpy", "scikit-learn", "lightgbm"]
    return ", ".join(f"{n} {version(n)}" for n in names)


def standalone(run: Callable[[Context], list[Row]], description: str, quick_help: str) -> None:
    """`python -m bench.<scenario> [--quick]`: one scenario in its own Spark session, its rows
    and notes printed."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args()
    from batchscore.cli import hard_exit
    from batchscore.physical.session import get_spark, prepare_environment
    from bench.run import _fmt

    prepare_environment()
    OUT.mkdir(parents=True, exist_ok=True)
    spark = get_spark("local[2]", {"spark.sql.shuffle.partitions": "4"})
    ctx = Context(quick=args.quick, repeats=1 if args.quick else 3, workdir=OUT, spark=spark)
    for row in run(ctx):
        print(_fmt(row), flush=True)
    for note in ctx.notes:
        print(note, flush=True)
    hard_exit(0)
