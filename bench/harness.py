"""The benchmark harness: timing, peak memory, and the RESULTS.md table.

A scenario module in bench/ exposes `run(ctx: Context) -> list[Row]`; `bench/run.py` lists the
modules in SCENARIOS. Every row is one variant of one scenario, timed as the median of
`ctx.repeats` runs in this process, so ratios compare like with like.
"""

from __future__ import annotations

import platform
import resource
import statistics
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


def timed_runs(
    fn: Callable[[], Any], repeats: int, budget_s: float | None = None
) -> tuple[float, Any, int]:
    """Median wall time of up to `repeats` calls, the last call's result, and the number of calls.

    With `budget_s`, calls stop early once they have taken that many seconds together (at least
    one call is made): a slow variant then gets fewer runs behind its median.
    """
    times: list[float] = []
    result = None
    while len(times) < max(1, repeats) and (budget_s is None or sum(times) < budget_s):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result, len(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (Linux: KiB)."""
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
