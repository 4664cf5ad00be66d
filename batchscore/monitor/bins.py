"""Exact counts of a batch in a profile's bins, without sorting the batch.

Monitoring counts every input of every scored batch in its training profile's bins (GRID - 1
quantile edges). Sorting the batch and then `searchsorted(sorted, edges)` is exact and was the
first way; its cost rides on numpy's sort, which is fast where numpy has a SIMD sort for the
CPU and about 4x slower where it has none (measured on 200 inputs x 10k rows: 57 ms a batch on
an AMD EPYC without it, against 16 ms for the index below). `searchsorted(edges, values)` on
the unsorted values is a branchy binary search per value, slower still.

`EdgeIndex` finds each value's bin in a few vectorized steps: a uniform grid of CELLS cells
over the edges' range gives a lower bound on the bin (the edges below the cell two cells
down, which floating-point error in the cell number cannot overshoot), then `steps` rounds of
`bin += edges[bin] < value` walk up to the exact bin, where `steps` is the most edges any
four neighbouring cells hold. Edges too uneven for the grid (a long tail: most edges in a few
cells) or too close for their magnitude get no index, and their inputs are sorted as before.

Where the driver has a C compiler the walk runs in native code (monitor.native_bins). Which
way is cheaper depends on the CPU, so `sorting_is_faster` times sorting against the counting
at hand once per process on a synthetic batch, and the accumulators follow it. Every way
gives the same counts (the unit tests hold them to equality), so the choice only moves time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CELLS = 4096
MAX_STEPS = 6
"""An index needing more refinement rounds than this costs about what sorting does."""
MAX_MAGNITUDE_CELLS = 1e12
"""Edges whose magnitude is this many cells or more: the cell number's rounding could exceed
the two-cell margin, so they get no index."""
CALIBRATION_ROWS = 8192

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class EdgeIndex:
    """Where each value falls among strictly increasing, finite `edges` (see the module)."""

    first: float
    scale: float  # cells per unit of value
    starts: npt.NDArray[np.int32]  # per cell, a lower bound on the bin of its values (int32:
    # the grid then fits the L1 cache next to the edges, measured 30% faster natively)
    steps: int
    padded: Floats  # the edges, then +inf (a value's bin never passes the last edge)

    @classmethod
    def build(cls, edges: Floats) -> EdgeIndex | None:
        """The index of `edges`, or None when they do not suit one (see the module)."""
        m = len(edges)
        if m < 2:
            return None
        first, last = float(edges[0]), float(edges[-1])
        width = (last - first) / CELLS
        magnitude = max(abs(first), abs(last))
        scale = 1.0 / width if width > 0 else 0.0
        if not (np.isfinite(width) and np.isfinite(scale) and scale > 0):
            return None  # one value's range, or edges spanning past the largest double
        if magnitude / width >= MAX_MAGNITUDE_CELLS:
            return None
        bounds = first + np.arange(CELLS + 2) * width
        below = np.searchsorted(edges, bounds, side="left")  # edges under each cell's start
        starts = np.concatenate(([0, 0], below[: CELLS - 2])).astype(np.int32)
        reach = below[2:]  # a value's bin is at most the edges under the start two cells up
        reach[-1] = m  # the top cell holds every value above the last edge
        steps = int((np.minimum(reach, m) - starts).max())
        if steps > MAX_STEPS:
            return None
        padded = np.append(np.asarray(edges, dtype=np.float64), np.inf)
        return cls(first, scale, starts, steps, padded)

    def bins(self, values: Floats) -> npt.NDArray[np.int32]:
        """Each finite value's bin: the number of edges strictly below it (so a value equal to
        an edge is in the bin that edge closes, as `searchsorted(..., side="right")` counts)."""
        cell = np.clip(values, self.first, self.padded[-2])  # no overflow below
        cell -= self.first
        cell *= self.scale
        np.minimum(cell, CELLS - 1, out=cell)
        found = self.starts.take(cell.astype(np.intp))
        edge = np.empty_like(values)
        above = np.empty(len(values), dtype=np.bool_)
        for _ in range(self.steps):
            self.padded.take(found, out=edge)
            np.less(edge, values, out=above)
            found += above
        return found

    def below(self, values: Floats) -> Counts:
        """Per edge, the finite `values` at or below it."""
        counts = np.bincount(self.bins(values), minlength=len(self.padded))
        return np.cumsum(counts[:-1], dtype=np.int64)


_BUILT: dict[bytes, EdgeIndex | None] = {}
MAX_BUILT = 4096


def index_of(edges: Floats) -> EdgeIndex | None:
    """`EdgeIndex.build`, once per process for each set of edges: a worker runs many tasks of a
    run, each with one accumulator per monitored input and the same training edges."""
    key = edges.tobytes()
    if key not in _BUILT:
        if len(_BUILT) >= MAX_BUILT:
            _BUILT.clear()
        _BUILT[key] = EdgeIndex.build(edges)
    return _BUILT[key]


Counter = Callable[[EdgeIndex, Floats], Counts]
"""A way to count a batch through an index: `EdgeIndex.below`, or the native loop."""

_FASTER: dict[str, bool] = {}


def sorting_is_faster(counter: Counter | None = None, name: str = "numpy") -> bool:
    """Whether this process counts a batch faster by sorting it than through an index with
    `counter` (default `EdgeIndex.below`; `name` tells counters apart). Timed once per process
    and counter, best of five each, on CALIBRATION_ROWS normal values and 199 quantile edges."""
    if name not in _FASTER:
        _FASTER[name] = _time_sorting(counter or EdgeIndex.below)
    return _FASTER[name]


def _time_sorting(counter: Counter) -> bool:
    rng = np.random.default_rng(0)
    values = rng.standard_normal(CALIBRATION_ROWS)
    edges = np.unique(np.quantile(values, np.arange(1, 200) / 200))
    index = EdgeIndex.build(edges)
    if index is None:  # pragma: no cover - normal quantiles always suit an index
        return True

    def best(run: Callable[[], object]) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    by_sort = best(lambda: np.sort(values).searchsorted(edges, side="right"))
    by_index = best(lambda: counter(index, values))
    return by_sort < by_index
