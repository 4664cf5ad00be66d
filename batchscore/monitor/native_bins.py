"""`EdgeIndex.below` in native code, and everything monitoring asks of a clean input, for every
input of a batch in one call.

With numpy, counting one input of one batch in its training bins is about a dozen passes over
the batch (the cell, its lower bound, the walk up the edges, `bincount`, `cumsum`), and that
was most of what monitoring 200 inputs cost. The C loop makes the same walk per value in one
pass, with four histograms so that runs of equal bins do not serialize on one counter.
`summaries` adds the bounds, sum and squared deviations in the same pass over memory, and
takes a batch's inputs together: per input, the Python and numpy calls around the loop had
come to cost more than the loop (measured: 200 inputs x 10k rows, 19 -> 11 ms a batch).

Built like the compiled forests (kernels.trees.compiled): only the driver compiles, once per
compiler (the on-disk cache, keyed by this source and the compiler's identity; `batchscore
cache clear` removes it), and the bytes travel with the run's monitor to executors, which load
them. Without a compiler, or where the library cannot load, counting falls back to numpy: the
counts are the same either way (the unit tests hold them equal), only the time differs.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchscore.kernels.trees.compiled import cache, toolchain
from batchscore.monitor.bins import CELLS, Counts, EdgeIndex, Floats, index_of, sorting_is_faster

VERSION = "bins-2"
LANES = 4
BLOCK = 512
"""Values per block of the native summary: 4 KB, read from memory once and again from L1."""

SOURCE = r"""
#include <stdint.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3")
#endif

__attribute__((visibility("default"))) int64_t bs_bins_abi(void) { return 2; }

static inline int64_t bin_of(
    double v, const double *restrict padded, const int32_t *restrict starts, double first,
    double last, double scale, int64_t steps)
{
    double cell = v < first ? first : (v > last ? last : v);
    cell = (cell - first) * scale;
    cell = cell > (double)(CELLS - 1) ? (double)(CELLS - 1) : cell;
    int64_t bin = starts[(int64_t)cell];
    for (int64_t s = 0; s < steps; s++) bin += padded[bin] < v;
    return bin;
}

/* counts: LANES x bins int64, zeroed; on return the first row holds the counts per bin.
   The cell and the walk are EdgeIndex.bins, value by value. */
__attribute__((visibility("default"))) void bs_bins(
    const double *restrict x, int64_t n, const double *restrict padded, int64_t bins,
    const int32_t *restrict starts, double first, double last, double scale, int64_t steps,
    int64_t *restrict counts)
{
    for (int64_t i = 0; i < n; i++) {
        const int64_t bin = bin_of(x[i], padded, starts, first, last, scale, steps);
        counts[(i & (LANES - 1)) * bins + bin]++;
    }
    for (int64_t lane = 1; lane < LANES; lane++)
        for (int64_t b = 0; b < bins; b++) counts[b] += counts[lane * bins + b];
}

/* Everything monitoring asks of a batch of one input, in one pass over memory: block by
   block (a block stays in L1), the sum, smallest, largest and bins (as bs_bins) of the block,
   then its squared deviations from its own mean, merged into the batch's (Chan et al.).
   A NaN or infinity makes a block's sum NaN or infinite: then 1 is returned and the caller
   takes the exact numpy path for this input (so do sums or squares that overflow).
   stats: min, max, sum, sum of squared deviations from the batch's mean. */
static int64_t bs_summary(
    const double *restrict x, int64_t n, const double *restrict padded, int64_t bins,
    const int32_t *restrict starts, double first, double last, double scale, int64_t steps,
    int64_t *restrict counts, double *restrict stats)
{
    if (n <= 0) return 1;
    double low = x[0], high = x[0], total = 0.0, count = 0.0, mean = 0.0, m2 = 0.0;
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t end = start + BLOCK < n ? start + BLOCK : n;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        double l0 = x[start], l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
        int64_t i = start;
        for (; i + 4 <= end; i += 4) {
            const double v0 = x[i], v1 = x[i + 1], v2 = x[i + 2], v3 = x[i + 3];
            s0 += v0; s1 += v1; s2 += v2; s3 += v3;
            l0 = v0 < l0 ? v0 : l0; l1 = v1 < l1 ? v1 : l1;
            l2 = v2 < l2 ? v2 : l2; l3 = v3 < l3 ? v3 : l3;
            h0 = v0 > h0 ? v0 : h0; h1 = v1 > h1 ? v1 : h1;
            h2 = v2 > h2 ? v2 : h2; h3 = v3 > h3 ? v3 : h3;
            counts[bin_of(v0, padded, starts, first, last, scale, steps)]++;
            counts[bins + bin_of(v1, padded, starts, first, last, scale, steps)]++;
            counts[2 * bins + bin_of(v2, padded, starts, first, last, scale, steps)]++;
            counts[3 * bins + bin_of(v3, padded, starts, first, last, scale, steps)]++;
        }
        for (; i < end; i++) {
            const double v = x[i];
            s0 += v;
            l0 = v < l0 ? v : l0;
            h0 = v > h0 ? v : h0;
            counts[bin_of(v, padded, starts, first, last, scale, steps)]++;
        }
        l0 = l0 < l1 ? l0 : l1; l2 = l2 < l3 ? l2 : l3; l0 = l0 < l2 ? l0 : l2;
        h0 = h0 > h1 ? h0 : h1; h2 = h2 > h3 ? h2 : h3; h0 = h0 > h2 ? h0 : h2;
        low = l0 < low ? l0 : low;
        high = h0 > high ? h0 : high;
        const double bsum = (s0 + s1) + (s2 + s3);
        if (!(bsum - bsum == 0.0)) return 1;  /* NaN or infinity in the block */
        const double size = (double)(end - start), bmean = bsum / size;
        double dev[LANES] = {0};
        for (int64_t i = start; i < end; i++) {
            const double d = x[i] - bmean;
            dev[i & (LANES - 1)] += d * d;
        }
        const double bm2 = (dev[0] + dev[1]) + (dev[2] + dev[3]);
        const double delta = bmean - mean, merged = count + size;
        mean += delta * size / merged;
        m2 += count > 0.0 ? bm2 + delta * delta * count * size / merged : bm2;
        count = merged;
        total += bsum;
    }
    if (!(total - total == 0.0) || !(m2 - m2 == 0.0)) return 1;  /* beyond doubles */
    for (int64_t lane = 1; lane < LANES; lane++)
        for (int64_t b = 0; b < bins; b++) counts[b] += counts[lane * bins + b];
    stats[0] = low;
    stats[1] = high;
    stats[2] = total;
    stats[3] = m2;
    return 0;
}

/* bs_summary of k inputs of one batch (n rows each) in one call: Python pays one crossing per
   batch instead of one per input. Per input j: status[j] (0: summarized), stats[4 j ...], and
   its counts at or below each of its edges in below[j * width ...] (bins[j] - 1 of them). */
__attribute__((visibility("default"))) void bs_summaries(
    int64_t k, int64_t n, const double *const *xs, const double *const *padded,
    const int64_t *bins, const int32_t *const *starts, const double *first, const double *last,
    const double *scale, const int64_t *steps, int64_t width, int64_t *restrict scratch,
    int64_t *restrict below, double *restrict stats, int64_t *restrict status)
{
    for (int64_t j = 0; j < k; j++) {
        for (int64_t b = 0; b < LANES * bins[j]; b++) scratch[b] = 0;
        status[j] = bs_summary(xs[j], n, padded[j], bins[j], starts[j], first[j], last[j],
                               scale[j], steps[j], scratch, stats + 4 * j);
        if (status[j] != 0) continue;
        int64_t run = 0;
        for (int64_t b = 0; b + 1 < bins[j]; b++) {
            run += scratch[b];
            below[j * width + b] = run;
        }
    }
}
"""


class NativeLoadError(toolchain.LibraryLoadError):
    """The library cannot be used in this process (platform, damaged bytes, dlopen)."""


@dataclass(frozen=True, eq=False)
class NativeBins:
    """The compiled loop's bytes (pickled with the run's monitor) and their sha256."""

    data: bytes
    sha256: str
    platform: str

    def below(self, index: EdgeIndex, values: Floats) -> Counts:
        """`index.below(values)` in one C pass; NativeLoadError where the library won't load."""
        counts = np.zeros(LANES * len(index.padded), dtype=np.int64)
        x = np.ascontiguousarray(values, dtype=np.float64)
        self.handle().bs_bins(
            x.ctypes.data,
            len(x),
            index.padded.ctypes.data,
            len(index.padded),
            index.starts.ctypes.data,
            index.first,
            float(index.padded[-2]),
            index.scale,
            index.steps,
            counts.ctypes.data,
        )
        return np.cumsum(counts[: len(index.padded) - 1])

    def summaries(self, inputs: InputSet, columns: Sequence[Floats]) -> list[Summary | None]:
        """Per column (contiguous float64, all of one length, in `inputs`' order): what
        `below` counts, and the values' bounds, sum and squared deviations from their mean;
        None (nothing counted) where a value is NaN or infinite, or the column is too short."""
        k = len(columns)
        n = len(columns[0]) if k else 0
        if k != len(inputs.indexes) or not all(_readable(x, n) for x in columns):
            raise ValueError("summaries: one contiguous float64 column per input, one length")
        xs = np.fromiter((x.ctypes.data for x in columns), dtype=np.uintp, count=k)
        scratch = np.empty(LANES * inputs.width, dtype=np.int64)
        below = np.empty((k, inputs.width), dtype=np.int64)
        stats = np.empty((k, 4))
        status = np.empty(k, dtype=np.int64)
        self.handle().bs_summaries(
            k, n, xs.ctypes.data, *inputs.arguments, scratch.ctypes.data, below.ctypes.data,
            stats.ctypes.data, status.ctypes.data,
        )  # fmt: skip
        return [
            Summary(below[j, : len(index.padded) - 1], *stats[j].tolist()) if ok == 0 else None
            for j, (index, ok) in enumerate(zip(inputs.indexes, status.tolist(), strict=True))
        ]

    def handle(self) -> Any:
        """The loaded library; NativeLoadError where it cannot load here, tried once per copy
        of the bytes (a task's accumulators share one copy: a refusal is not retried for
        each of its inputs)."""
        lib = _HANDLES.get(self.sha256)
        if lib is None:
            with _LOCK:
                if self in _REFUSED:
                    raise NativeLoadError(_REFUSED[self])
                lib = _HANDLES.get(self.sha256)
                if lib is None:
                    try:
                        lib = _load(self)
                    except NativeLoadError as exc:
                        _REFUSED[self] = str(exc)
                        raise
                    _HANDLES[self.sha256] = lib
        return lib


def _readable(x: Floats, n: int) -> bool:
    """What the C loop may read as `n` doubles."""
    return len(x) == n and x.dtype == np.float64 and bool(x.flags.c_contiguous)


@dataclass(frozen=True)
class Summary:
    """One clean batch of one input: counts at or below each edge, bounds, sum, and the sum
    of squared deviations from the batch's mean (merged into the running variance by
    `profile.chan`)."""

    below: Counts
    low: float
    high: float
    total: float
    m2: float


class InputSet:
    """The fixed arguments of `summaries` for a list of edge indexes (their tables' addresses,
    grids and walks), built once per task and set of inputs rather than once per batch."""

    def __init__(self, indexes: Sequence[EdgeIndex]) -> None:
        self.indexes = tuple(indexes)  # held: the addresses below point into them
        self.width = max((len(i.padded) for i in self.indexes), default=1)
        self.padded = np.fromiter((i.padded.ctypes.data for i in indexes), dtype=np.uintp)
        self.bins = np.array([len(i.padded) for i in indexes], dtype=np.int64)
        self.starts = np.fromiter((i.starts.ctypes.data for i in indexes), dtype=np.uintp)
        self.first = np.array([i.first for i in indexes], dtype=np.float64)
        self.last = np.array([float(i.padded[-2]) for i in indexes], dtype=np.float64)
        self.scale = np.array([i.scale for i in indexes], dtype=np.float64)
        self.steps = np.array([i.steps for i in indexes], dtype=np.int64)

    @property
    def arguments(self) -> tuple[int, ...]:
        return (
            self.padded.ctypes.data,
            self.bins.ctypes.data,
            self.starts.ctypes.data,
            self.first.ctypes.data,
            self.last.ctypes.data,
            self.scale.ctypes.data,
            self.steps.ctypes.data,
            self.width,
        )


_HANDLES: dict[str, Any] = {}
_REFUSED: weakref.WeakKeyDictionary[NativeBins, str] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _load(native: NativeBins) -> Any:
    lib = toolchain.load_verified(
        native.data, native.sha256, native.platform, "batchscore-bins-", NativeLoadError
    )
    lib.bs_bins_abi.restype = ctypes.c_int64
    if lib.bs_bins_abi() != 2:
        raise NativeLoadError("the library's ABI is not this batchscore's")
    i64, f64, ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
    lib.bs_bins.argtypes = [ptr, i64, ptr, i64, ptr, f64, f64, f64, i64, ptr]
    lib.bs_bins.restype = None
    lib.bs_summaries.argtypes = [i64, i64, *[ptr] * 8, i64, *[ptr] * 4]
    lib.bs_summaries.restype = None
    return lib


def source() -> str:
    """The C unit, with this batchscore's grid size and lane count."""
    return f"#define CELLS {CELLS}\n#define LANES {LANES}\n#define BLOCK {BLOCK}\n" + SOURCE


def native_bins() -> NativeBins | None:
    """The compiled loop for this driver's compiler (from the cache, else compiled now: well
    under a second), or None without a compiler or when it fails: monitoring then counts with
    numpy. Only the driver calls this; executors get the bytes with the run's monitor."""
    compiler = toolchain.find_compiler()
    if compiler is None:
        return None
    text = source()
    key = cache.cache_key(hashlib.sha256(text.encode()).hexdigest(), compiler.identity, VERSION)
    entry = cache.lookup(key, compiler.identity, VERSION)
    try:
        if entry is not None:
            native = NativeBins(entry.data, entry.sha256, toolchain.PLATFORM)
        else:
            data, seconds = toolchain.build_shared_library(compiler, (text,))
            digest = cache.store(
                key,
                data,
                compiler_identity=compiler.identity,
                codegen_version=VERSION,
                seconds=seconds,
            )
            native = NativeBins(data, digest, toolchain.PLATFORM)
        native.handle()  # fails here, on the driver, rather than on every executor
    except (toolchain.CompileError, NativeLoadError):
        return None
    return native


def counting(
    edges: Floats, native: NativeBins | None
) -> tuple[EdgeIndex | None, NativeBins | None]:
    """How an accumulator counts a batch in `edges`' bins: through an index (natively with
    `native` where it loads here, else with numpy), or, where sorting is cheaper on this CPU
    or the edges suit no index, by sorting (index None)."""
    if native is not None:
        try:
            native.handle()
            if not sorting_is_faster(native.below, native.sha256):
                return index_of(edges), native
        except NativeLoadError:
            native = None
    if native is None and not sorting_is_faster():
        return index_of(edges), None
    return None, None
