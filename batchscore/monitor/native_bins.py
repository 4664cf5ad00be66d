"""`EdgeIndex.below` in native code: one C loop per input instead of a dozen numpy passes.

With numpy, counting one input of one batch in its training bins is about a dozen passes over
the batch (the cell, its lower bound, the walk up the edges, `bincount`, `cumsum`), and that
was most of what monitoring 200 inputs cost. The C loop makes the same walk per value in one
pass, with four histograms so that runs of equal bins do not serialize on one counter.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchscore.kernels.trees.compiled import cache, toolchain
from batchscore.monitor.bins import CELLS, Counts, EdgeIndex, Floats, index_of, sorting_is_faster

VERSION = "bins-1"
LANES = 4

SOURCE = r"""
#include <stdint.h>

__attribute__((visibility("default"))) int64_t bs_bins_abi(void) { return 1; }

/* counts: LANES x bins int64, zeroed; on return the first row holds the counts per bin.
   The cell and the walk are EdgeIndex.bins, value by value. */
__attribute__((visibility("default"))) void bs_bins(
    const double *restrict x, int64_t n, const double *restrict padded, int64_t bins,
    const int32_t *restrict starts, double first, double last, double scale, int64_t steps,
    int64_t *restrict counts)
{
    const double top = (double)(CELLS - 1);
    for (int64_t i = 0; i < n; i++) {
        const double v = x[i];
        double cell = v < first ? first : (v > last ? last : v);
        cell = (cell - first) * scale;
        cell = cell > top ? top : cell;
        int64_t bin = starts[(int64_t)cell];
        for (int64_t s = 0; s < steps; s++) bin += padded[bin] < v;
        counts[(i & (LANES - 1)) * bins + bin]++;
    }
    for (int64_t lane = 1; lane < LANES; lane++)
        for (int64_t b = 0; b < bins; b++) counts[b] += counts[lane * bins + b];
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
        bins = len(index.padded)
        counts = np.zeros(LANES * bins, dtype=np.int64)
        x = np.ascontiguousarray(values, dtype=np.float64)
        self.handle().bs_bins(
            x.ctypes.data,
            len(x),
            index.padded.ctypes.data,
            bins,
            index.starts.ctypes.data,
            index.first,
            float(index.padded[-2]),
            index.scale,
            index.steps,
            counts.ctypes.data,
        )
        return np.cumsum(counts[: bins - 1])

    def handle(self) -> Any:
        lib = _HANDLES.get(self.sha256)
        if lib is None:
            with _LOCK:
                lib = _HANDLES.get(self.sha256) or _load(self)
                _HANDLES[self.sha256] = lib
        return lib


_HANDLES: dict[str, Any] = {}
_LOCK = threading.Lock()


def _load(native: NativeBins) -> Any:
    lib = toolchain.load_verified(
        native.data, native.sha256, native.platform, "batchscore-bins-", NativeLoadError
    )
    lib.bs_bins_abi.restype = ctypes.c_int64
    if lib.bs_bins_abi() != 1:
        raise NativeLoadError("the library's ABI is not this batchscore's")
    i64, f64, ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
    lib.bs_bins.argtypes = [ptr, i64, ptr, i64, ptr, f64, f64, f64, i64, ptr]
    lib.bs_bins.restype = None
    return lib


def source() -> str:
    """The C unit, with this batchscore's grid size and lane count."""
    return f"#define CELLS {CELLS}\n#define LANES {LANES}\n" + SOURCE


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
