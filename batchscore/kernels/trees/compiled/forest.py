"""A compiled forest: the shared object's bytes (pickled with the kernel) and a loaded handle.

The driver builds it (`compile_forest`: cache hit or compile); the bytes travel inside the
scoring task to executors, which write them to a private temporary file, `dlopen` it, and
unlink the file (Linux keeps the mapping). Executors never compile: a forest that reaches one
without bytes is an error (`toolchain.forbid_on_executor`). A library that cannot be loaded
there (another CPU architecture or C library than the driver's) raises `ForestLoadError`, and
the kernel scores with the numpy traversal instead (same results, slower).

Rows are split across `scoring_threads()` threads (the physical layer sets it from
spark.task.cpus); ctypes releases the GIL during each call.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import Any

import numpy as np
import scipy.sparse as sp

from batchscore.kernels.lightgbm_native import scoring_threads
from batchscore.kernels.trees.compiled import cache, codegen, row_order, sparse_rows, toolchain
from batchscore.kernels.trees.ir import InputRule, TreeEnsemble

PLATFORM = toolchain.PLATFORM
MIN_ROWS_PER_THREAD = 2 * codegen.BLOCK_ROWS
DENSE_CHUNK_BYTES = 32 << 20
"""Sparse input is densified (only the columns the trees read) this many bytes at a time."""

_HANDLES: dict[str, Any] = {}
_LOCK = threading.Lock()


class ForestLoadError(toolchain.LibraryLoadError):
    """The shared object cannot be used in this process (platform, ABI, damaged bytes)."""


@dataclass(frozen=True, eq=False)
class BuildInfo:
    compiler: str
    seconds: float  # cold compile time (of this run, or recorded with the cached entry)
    cache_hit: bool
    forms: dict[str, int]  # trees per code form (codegen.forms)
    order: row_order.RowOrder | None = None
    sparse: str | None = None  # sparse_rows.SparseForm.describe(), when the model has one

    def describe(self) -> str:
        parts = [" + ".join(f"{n} {form}" for form, n in self.forms.items() if n) + " trees"]
        if self.order is not None:
            parts.append(self.order.describe())
        if self.sparse is not None:
            parts.append(self.sparse)
        return ", ".join(parts)


@dataclass(eq=False)
class CompiledForest:
    """Exit leaves and per-output leaf sums of one ensemble, in native code."""

    data: bytes
    sha256: str
    platform: str
    used: np.ndarray | None  # the input columns the trees read, or None for all of them
    n_inputs: int  # width of the matrices passed in (the IR's n_features)
    n_trees: int
    n_outputs: int
    info: BuildInfo
    input_rule: InputRule = "float64"
    sparse: sparse_rows.SparseForm | None = None
    """CSR batches with few stored values per row take its tables (sparse_rows)."""

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @cached_property
    def _cols(self) -> np.ndarray | None:
        """`used` as the int64 array the compiled code indexes with."""
        return None if self.used is None else np.ascontiguousarray(self.used, dtype=np.int64)

    # ------------------------------------------------------------------ scoring

    def sums(self, X: Any) -> np.ndarray:
        """(n, n_outputs) float64: leaf values added tree by tree (before base/divisor/link)."""
        out = np.zeros((X.shape[0], self.n_outputs))
        if self.sparse is not None and sp.issparse(X) and X.shape[1] == self.n_inputs:
            A = sparse_rows.SparseBatch.of(X, self.input_rule)
            if self.sparse_tables().cheaper(A):
                self._sparse_run(A, out)
                return out
        self._run("bs_sums", X, out)
        return out

    def sparse_tables(self) -> sparse_rows.SparseTables:
        assert self.sparse is not None
        return self.sparse.tables(self.sha256)

    def _sparse_run(self, A: sparse_rows.SparseBatch, out: np.ndarray) -> None:
        tables, n = self.sparse_tables(), A.n_rows
        fn = self.handle().bs_sparse_sums
        _in_threads(_threads(n), n, partial(tables.sums_into, fn, A, out))

    def _run(self, name: str, X: Any, out: np.ndarray) -> None:
        n = X.shape[0]
        if n == 0:
            return
        fn = getattr(self.handle(), name)
        threads = _threads(n)
        for start, stop in _chunks(n, self._chunk_rows(X)):
            part, cols = self._inputs(X[start:stop])
            rows = self._row_order(part, cols)
            work = partial(_call_share, fn, part, out[start:stop], rows, cols)
            _in_threads(threads, part.shape[0], work)  # each thread: its rows, in order

    def _row_order(self, part: np.ndarray, cols: np.ndarray | None) -> np.ndarray | None:
        """The rows of `part` in the order to walk them (row_order), or None: table order.
        `part` holds every input (with `cols`, or when nothing was compacted) or only the
        used ones."""
        order = self.info.order
        if order is None:
            return None
        column = order.column
        if cols is None and self.used is not None:
            column = int(np.searchsorted(self.used, column))
        return order.permutation(part[:, column])

    def _chunk_rows(self, X: Any) -> int:
        if not sp.issparse(X):
            return max(1, int(X.shape[0]))
        width = len(self.used) if self.used is not None else self.n_inputs
        return int(max(codegen.BLOCK_ROWS, DENSE_CHUNK_BYTES // (8 * max(width, 1))))

    def _inputs(self, X: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """A C-contiguous float64 matrix and the columns of it the trees read (None: all, in
        order). A dense matrix goes in whole: the compiled code gathers the columns it reads a
        block of rows at a time, where a copy of them here would write every row once more."""
        if self.used is not None and not self.used.size:  # no split reads an input: the
            return np.zeros((X.shape[0], 1)), None  # code still has one (BS_F >= 1)
        if sp.issparse(X):
            part = X.tocsr()
            if self.used is not None:
                part = part[:, self.used]
            return np.ascontiguousarray(part.toarray(), dtype=np.float64), None
        A = np.ascontiguousarray(X, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != self.n_inputs:
            raise ValueError(f"compiled forest: {A.shape} input for {self.n_inputs} columns")
        return A, self._cols

    # ------------------------------------------------------------------ loading

    def handle(self) -> Any:
        lib = _HANDLES.get(self.sha256)
        if lib is None:
            with _LOCK:
                lib = _HANDLES.get(self.sha256)
                if lib is None:
                    lib = _load(self)
                    _HANDLES[self.sha256] = lib
        return lib


def _threads(n: int) -> int:
    return max(1, min(scoring_threads(), n // MIN_ROWS_PER_THREAD))


def _in_threads(threads: int, n: int, work: Callable[[int, int], None]) -> None:
    """`work(a, b)` over consecutive row ranges covering 0..n, one per thread."""
    if threads == 1:
        work(0, n)
        return
    bounds = np.linspace(0, n, threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        jobs = [pool.submit(work, int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        for job in jobs:
            job.result()


def _call_share(
    fn: Any,
    X: np.ndarray,
    out: np.ndarray,
    rows: np.ndarray | None,
    cols: np.ndarray | None,
    a: int,
    b: int,
) -> None:
    _call(fn, *_share(X, out, rows, a, b), cols)


def _chunks(n: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _share(
    X: np.ndarray, out: np.ndarray, rows: np.ndarray | None, a: int, b: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One thread's part of a call: rows a..b of X and out, or (in row order) the a..b-th
    entries of `rows` over the whole of both."""
    return (X[a:b], out[a:b], None) if rows is None else (X, out, rows[a:b])


def _call(
    fn: Any, X: np.ndarray, out: np.ndarray, rows: np.ndarray | None, cols: np.ndarray | None
) -> None:
    """Sums of X's rows into out's: all of them, or `rows` (int64) of both, in that order."""
    n = X.shape[0] if rows is None else rows.shape[0]
    if n == 0:
        return
    where = None if cols is None else cols.ctypes.data
    order = None if rows is None else rows.ctypes.data
    status = fn(X.ctypes.data, n, X.shape[1], where, order, out.ctypes.data)
    if status != 0:
        raise MemoryError("compiled forest: out of memory for its row block")


def _load(forest: CompiledForest) -> Any:
    lib = toolchain.load_verified(
        forest.data, forest.sha256, forest.platform, "batchscore-forest-", ForestLoadError
    )
    lib.bs_abi.restype = ctypes.c_int64
    if lib.bs_abi() != codegen.ABI_VERSION:
        raise ForestLoadError(f"library ABI {lib.bs_abi()} != {codegen.ABI_VERSION}")
    lib.bs_sums.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.bs_sums.restype = ctypes.c_int
    lib.bs_sparse_sums.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.bs_sparse_sums.argtypes += [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_void_p]
    lib.bs_sparse_sums.restype = ctypes.c_int
    return lib


# ---------------------------------------------------------------------- building (driver)


def compile_forest(
    ens: TreeEnsemble,
    outputs: np.ndarray | None = None,
    n_outputs: int | None = None,
    *,
    words: codegen.WordTests | None = None,
    prepared: int | None = None,
) -> CompiledForest | None:
    """The compiled form of `ens` (from the cache or the compiler); None without a compiler.

    `outputs[t]` is the first sums column tree t adds to (default: the trees' own `output`),
    so several models merged into one ensemble each get their own columns. `words` and
    `prepared` describe a factorized fact side (codegen.generate); its inputs are passed
    whole (no column gathering).
    """
    compiler = toolchain.find_compiler()
    if compiler is None:
        return None
    toolchain.forbid_on_executor()
    outs = np.asarray([t.output for t in ens.trees] if outputs is None else outputs, dtype=np.int64)
    width = ens.n_outputs if n_outputs is None else n_outputs
    compact, used = (ens, None) if words else _compact(ens)
    fp = sparse_rows.fingerprint(codegen.fingerprint(compact, outs, width, words, prepared))
    key = cache.cache_key(fp, compiler.identity, codegen.CODEGEN_VERSION)
    entry = cache.lookup(key, compiler.identity, codegen.CODEGEN_VERSION)
    chosen = codegen.forms(compact, words)
    counts = {f: chosen.count(f) for f in (codegen.BRANCHY, codegen.BRANCHLESS, codegen.TABLE)}
    order = row_order.choose(compact, chosen, words, used)
    form = None if words else sparse_rows.SparseForm.of(ens, outs)
    sparse = None if form is None else form.describe()
    if entry is not None:
        info = BuildInfo(compiler.version, entry.compile_seconds, True, counts, order, sparse)
        forest = _forest(entry.data, entry.sha256, used, ens, width, info, form)
        try:
            forest.handle()  # an entry this process cannot load is recompiled, never used
            return forest
        except ForestLoadError:
            pass
    started = time.perf_counter()
    source = codegen.generate(compact, outs, width, words, prepared)
    units = (*source.units, sparse_rows.C_SOURCE)
    data, _ = toolchain.build_shared_library(compiler, units)
    seconds = time.perf_counter() - started
    digest = cache.store(
        key,
        data,
        compiler_identity=compiler.identity,
        codegen_version=codegen.CODEGEN_VERSION,
        seconds=seconds,
    )
    info = BuildInfo(compiler.version, seconds, False, counts, order, sparse)
    forest = _forest(data, digest, used, ens, width, info, form)
    forest.handle()  # fails here, on the driver, rather than on every executor
    return forest


def _forest(
    data: bytes,
    digest: str,
    used: np.ndarray | None,
    ens: TreeEnsemble,
    width: int,
    info: BuildInfo,
    form: sparse_rows.SparseForm | None,
) -> CompiledForest:
    return CompiledForest(
        data=data,
        sha256=digest,
        platform=PLATFORM,
        used=used,
        n_inputs=ens.n_features,
        n_trees=ens.n_trees,
        n_outputs=width,
        info=info,
        input_rule=ens.input_rule,
        sparse=form,
    )


def _compact(ens: TreeEnsemble) -> tuple[TreeEnsemble, np.ndarray | None]:
    """`ens` over only the input columns its trees read (None when it reads all of them)."""
    feats = [t.feature for t in ens.trees if t.n_internal]
    used = np.unique(np.concatenate(feats)) if feats else np.zeros(0, dtype=np.int64)
    if used.size == ens.n_features:
        return ens, None
    position = np.full(max(ens.n_features, 1), -1, dtype=np.int64)
    position[used] = np.arange(used.size)
    trees = tuple(
        replace(t, feature=position[t.feature].astype(np.int32)) if t.n_internal else t
        for t in ens.trees
    )
    return replace(ens, trees=trees, n_features=int(used.size)), used.astype(np.intp)
