"""Sparse rows scored QuickScorer-style over their non-zeros: work per stored value, not per node.

A one-hot dimension makes rows of thousands of inputs with a few non-zeros (Walmart: 2,441
inputs, 14 non-zeros a row). The branchy code walks every tree over a densified copy of the
columns it reads; its data-dependent branches cost ~1 ns per node on the path (7 per tree
there). QuickScorer instead finds a tree's exit leaf as the lowest set bit of the AND of the
masks of its false nodes (kernels.trees.factorized explains the masks). Per input, the false
nodes of a value depend only on where the value falls among that input's sorted thresholds,
so the AND per tree of each such "bin" is a table built once per model and process, and a
row costs one binary search per stored value, the table entries of its bins, and a lowest set
bit per tree.

An input whose value 0 leaves every node true (one-hot columns, counts: `x <= t` with t >= 0)
contributes nothing when it is absent, so only a row's stored values are read. Inputs where 0
sends some node right ("dense" here) are read in every row, 0 when not stored.

Bins of input f with sorted distinct thresholds u (m of them): b = #{u < x} for numbers
(node j is false iff x > u_j iff j < b), m + 1 for NaN (false: `!nan_left`), m + 2 for x == 0
(false: zero-as-missing nodes that go right, and the rest with 0 > t), after the ensemble's
input rule. The exit leaf is the one the tree walk reaches, and leaf values are added tree by
tree in the ensemble's order: the sums are bit-identical to the branchy code's.

Measured on Walmart's LightGBM (210 trees x 31 leaves, 421,570 rows in 10,000-row CSR
batches, one thread): 0.33 s against 0.57-0.67 s for the branchy code (each with its input
preparation), same bits. Dense rows read
every input, so they keep the branchy code; a CSR batch takes this path when its estimated
table entries per row (plus a leaf per tree) are fewer than the nodes a branchy walk tests
(`SparseTables.cheaper`). Only trees of at most 64 leaves without categorical splits qualify,
and tables beyond MAX_ENTRIES are not built.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from batchscore.kernels.trees.ir import InputRule, Tree, TreeEnsemble, prepare_values

ENV = "BATCHSCORE_SPARSE_ROWS"
MAX_LEAVES = 64
MAX_ENTRIES = 2_000_000
"""Table entries (12 bytes each) beyond which the sparse form is not built."""
UNUSED, NEUTRAL = -2, -1

C_SOURCE = r"""
#ifndef EXPORT
#define EXPORT __attribute__((visibility("default")))
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

typedef struct {
  int64_t n_trees, n_dense;
  const int32_t* slot;        /* per input: -2 unused, -1 zero-neutral, k: dense slot k */
  const int64_t* first_thr;   /* per input + 1: its thresholds in thr */
  const double* thr;
  const int64_t* first_bin;   /* per input: its first bin in bin_entries */
  const int64_t* bin_entries; /* per bin + 1: its entries */
  const int32_t* entry_tree;
  const uint64_t* entry_mask;
  const int32_t* dense;       /* the dense inputs, by slot */
  const double* leaf_values;
  const int64_t* leaf_first;  /* per tree: its first leaf value */
  const int32_t* tree_output; /* per tree: first sums column */
  const int32_t* tree_width;  /* per tree: values per leaf */
} bs_sparse_tables;

static inline int64_t bs_bin(const bs_sparse_tables* q, int64_t f, double x) {
  const double* t = q->thr + q->first_thr[f];
  int64_t m = q->first_thr[f + 1] - q->first_thr[f];
  if (isnan(x)) return m + 1;
  if (x == 0.0) return m + 2;
  int64_t lo = 0, hi = m;
  while (lo < hi) {
    int64_t mid = (lo + hi) >> 1;
    if (t[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

static inline void bs_apply(const bs_sparse_tables* q, int64_t f, int64_t b, uint64_t* acc) {
  const int64_t* at = q->bin_entries + q->first_bin[f] + b;
  for (int64_t e = at[0]; e < at[1]; e++) acc[q->entry_tree[e]] &= q->entry_mask[e];
}

#define BS_NARROW 16

/* Each tree's exit leaf added into the row's sums, tree by tree (the branchy code's order).
   `narrow` (one value per leaf, at most BS_NARROW outputs): the sums stay in a local array,
   which the compiler need not reload after every store to `sums` (10% of Walmart's time). */
static inline void bs_leaves(const bs_sparse_tables* q, const uint64_t* acc, int narrow,
                             int64_t n_outputs, double* sums) {
  if (narrow) {
    double s[BS_NARROW];
    for (int64_t k = 0; k < n_outputs; k++) s[k] = sums[k];
    for (int64_t t = 0; t < q->n_trees; t++)
      s[q->tree_output[t]] += q->leaf_values[q->leaf_first[t] + __builtin_ctzll(acc[t])];
    for (int64_t k = 0; k < n_outputs; k++) sums[k] = s[k];
    return;
  }
  for (int64_t t = 0; t < q->n_trees; t++) {
    int64_t w = q->tree_width[t];
    const double* v = q->leaf_values + q->leaf_first[t] + __builtin_ctzll(acc[t]) * w;
    double* s = sums + q->tree_output[t];
    for (int64_t k = 0; k < w; k++) s[k] += v[k];
  }
}

EXPORT int bs_sparse_sums(const bs_sparse_tables* q, int64_t start, int64_t stop,
                          const int64_t* indptr, const int64_t* indices, const double* data,
                          int64_t n_outputs, double* out) {
  uint64_t* acc = (uint64_t*)malloc(sizeof(uint64_t) * (size_t)(q->n_trees + 1));
  int64_t* dense_bin = (int64_t*)malloc(sizeof(int64_t) * (size_t)(q->n_dense + 1));
  if (!acc || !dense_bin) { free(acc); free(dense_bin); return 1; }
  int narrow = n_outputs <= BS_NARROW;
  for (int64_t t = 0; t < q->n_trees; t++) narrow = narrow && q->tree_width[t] == 1;
  for (int64_t r = start; r < stop; r++) {
    for (int64_t t = 0; t < q->n_trees; t++) acc[t] = ~(uint64_t)0;
    for (int64_t k = 0; k < q->n_dense; k++) dense_bin[k] = bs_bin(q, q->dense[k], 0.0);
    for (int64_t p = indptr[r]; p < indptr[r + 1]; p++) {
      int64_t f = indices[p];
      int32_t s = q->slot[f];
      if (s == -2) continue;
      int64_t b = bs_bin(q, f, data[p]);
      if (s >= 0) dense_bin[s] = b; else bs_apply(q, f, b, acc);
    }
    for (int64_t k = 0; k < q->n_dense; k++) bs_apply(q, q->dense[k], dense_bin[k], acc);
    bs_leaves(q, acc, narrow, n_outputs, out + r * n_outputs);
  }
  free(acc);
  free(dense_bin);
  return 0;
}
"""


def fingerprint(model: str) -> str:
    """A library's cache key part: the model's code (codegen.fingerprint) and this source,
    which every library carries."""
    return hashlib.sha256(f"{model}|{C_SOURCE}".encode()).hexdigest()


class _Tables(ctypes.Structure):
    _fields_ = [
        ("n_trees", ctypes.c_int64),
        ("n_dense", ctypes.c_int64),
        *((name, ctypes.c_void_p) for name in (
            "slot", "first_thr", "thr", "first_bin", "bin_entries", "entry_tree",
            "entry_mask", "dense", "leaf_values", "leaf_first", "tree_output", "tree_width",
        )),
    ]  # fmt: skip


@dataclass(frozen=True, eq=False)
class SparseTables:
    """One ensemble's QuickScorer tables over its inputs (see the module doc), plain arrays
    pickled with the kernel."""

    slot: np.ndarray  # int32 (F,)
    first_thr: np.ndarray  # int64 (F + 1,)
    thr: np.ndarray  # float64
    first_bin: np.ndarray  # int64 (F,)
    bin_entries: np.ndarray  # int64 (bins + 1,)
    entry_tree: np.ndarray  # int32
    entry_mask: np.ndarray  # uint64
    dense: np.ndarray  # int32
    leaf_values: np.ndarray  # float64
    leaf_first: np.ndarray  # int64 (T,)
    tree_output: np.ndarray  # int32 (T,)
    tree_width: np.ndarray  # int32 (T,)
    trees_reading: np.ndarray  # float64 (F,): trees with a node on the input (entries bound)
    walk_nodes: float  # nodes a branchy walk tests per row (mean leaf depth, summed)

    @property
    def n_trees(self) -> int:
        return int(self.tree_output.shape[0])

    def cheaper(self, X: SparseBatch) -> bool:
        """Whether this batch costs fewer table entries and leaves per row than branchy nodes
        (entries bounded by the trees that read each stored input). `BATCHSCORE_SPARSE_ROWS=0`
        keeps the branchy code."""
        if os.environ.get(ENV, "1") == "0":
            return False
        n = max(X.n_rows, 1)
        entries = float(self.trees_reading[X.indices].sum()) / n
        entries += float(self.trees_reading[self.dense].sum())
        return bool(entries + self.n_trees < self.walk_nodes)

    def sums_into(self, fn: Any, X: SparseBatch, out: np.ndarray, start: int, stop: int) -> None:
        """Rows start..stop of X added into the same rows of out (`fn`: bs_sparse_sums)."""
        if stop <= start:
            return
        status = fn(
            ctypes.byref(self._struct),
            start,
            stop,
            X.indptr.ctypes.data,
            X.indices.ctypes.data,
            X.data.ctypes.data,
            out.shape[1],
            out.ctypes.data,
        )
        if status != 0:
            raise MemoryError("compiled forest: out of memory for sparse rows")

    @property
    def _struct(self) -> _Tables:
        cached = self.__dict__.get("_c")
        if cached is None:
            names = [field[0] for field in _Tables._fields_[2:]]
            arrays = {name: getattr(self, name).ctypes.data for name in names}
            cached = _Tables(self.n_trees, int(self.dense.shape[0]), **arrays)
            object.__setattr__(self, "_c", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_c"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass(frozen=True)
class SparseBatch:
    """A CSR batch as the C code reads it: int64 row pointers and columns, prepared values
    (own arrays: scipy may narrow index types to int32 whenever they fit)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.indptr.shape[0]) - 1

    @staticmethod
    def of(X: Any, rule: InputRule) -> SparseBatch:
        A = sp.csr_matrix(X)
        if not A.has_canonical_format:
            A = A.copy()
            A.sum_duplicates()
        data = prepare_values(rule, np.asarray(A.data, dtype=np.float64))
        return SparseBatch(
            np.ascontiguousarray(A.indptr, dtype=np.int64),
            np.ascontiguousarray(A.indices, dtype=np.int64),
            np.ascontiguousarray(data, dtype=np.float64),
        )


@dataclass(frozen=True, eq=False)
class SparseForm:
    """What a forest's tables are built from: its ensemble (full input numbering) and output
    columns. They are built where a sparse batch first needs them, once per process (keyed by
    the library's sha256): a model only ever given dense rows neither builds nor ships them
    (the tables of a 500-tree model take ~12 MB)."""

    ens: TreeEnsemble
    outputs: np.ndarray

    @staticmethod
    def of(ens: TreeEnsemble, outputs: np.ndarray) -> SparseForm | None:
        """None when `ens` does not qualify (leaves, categorical splits, table size)."""
        if ens not in _QUALIFIES:  # an IR kept by content (lightgbm_text) is asked every run
            _QUALIFIES[ens] = _qualifies(ens)
        return SparseForm(ens, outputs) if _QUALIFIES[ens] else None

    def describe(self) -> str:
        return "sparse rows by QuickScorer tables"

    def tables(self, key: str) -> SparseTables:
        with _LOCK:
            built = _BUILT.get(key)
            if built is None:
                built = _BUILT[key] = build(self.ens, self.outputs)
        return built


def _qualifies(ens: TreeEnsemble) -> bool:
    trees = ens.trees
    if not trees or any(t.n_leaves > MAX_LEAVES or (t.cat_left >= 0).any() for t in trees):
        return False
    return _entry_count(_nodes(trees)) <= MAX_ENTRIES


_QUALIFIES: weakref.WeakKeyDictionary[TreeEnsemble, bool] = weakref.WeakKeyDictionary()
_BUILT: dict[str, SparseTables] = {}
_LOCK = threading.Lock()


def build(ens: TreeEnsemble, outputs: np.ndarray) -> SparseTables:
    """The tables of `ens` (full input numbering; SparseForm.of says whether it qualifies)."""
    trees = ens.trees
    per_input = _group(_nodes(trees))
    slot = np.full(ens.n_features, UNUSED, dtype=np.int32)
    first_thr, first_bin = [0], []
    thr: list[np.ndarray] = []
    bin_entries: list[int] = [0]
    entry_tree: list[np.ndarray] = []
    entry_mask: list[np.ndarray] = []
    dense: list[int] = []
    reading = np.zeros(ens.n_features)
    for f in range(ens.n_features):
        first_bin.append(len(bin_entries) - 1)
        group = per_input.get(f)
        if group is None:
            first_thr.append(first_thr[-1])
            bin_entries.extend([bin_entries[-1]] * 3)  # the empty bins 0, NaN and zero
            continue
        u, bins = _bins(group)
        thr.append(u)
        first_thr.append(first_thr[-1] + len(u))
        for tree_ids, masks in bins:
            entry_tree.append(tree_ids)
            entry_mask.append(masks)
            bin_entries.append(bin_entries[-1] + len(tree_ids))
        reading[f] = len(np.unique(group["tree"]))
        if len(bins[-1][0]):  # the zero bin clears something: read in every row
            slot[f] = len(dense)
            dense.append(f)
        else:
            slot[f] = NEUTRAL
    values, first = _leaves(trees)
    return SparseTables(
        slot=slot,
        first_thr=np.asarray(first_thr, dtype=np.int64),
        thr=_cat(thr, np.float64),
        first_bin=np.asarray(first_bin, dtype=np.int64),
        bin_entries=np.asarray(bin_entries, dtype=np.int64),
        entry_tree=_cat(entry_tree, np.int32),
        entry_mask=_cat(entry_mask, np.uint64),
        dense=np.asarray(dense, dtype=np.int32),
        leaf_values=values,
        leaf_first=first,
        tree_output=np.asarray(outputs, dtype=np.int32),
        tree_width=np.asarray([t.leaf_value.shape[1] for t in trees], dtype=np.int32),
        trees_reading=reading,
        walk_nodes=float(sum(_mean_leaf_depth(t) for t in trees)),
    )


def _nodes(trees: tuple[Tree, ...]) -> dict[str, np.ndarray]:
    """Every internal node of the ensemble: its tree, input, test and QuickScorer mask."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in _NODE_FIELDS}
    for t, tree in enumerate(trees):
        m = tree.n_internal
        if not m:
            continue
        parts["mask"].append(tree.left_masks(1)[:, 0])
        parts["tree"].append(np.full(m, t, dtype=np.int64))
        parts["feature"].append(tree.feature.astype(np.int64))
        parts["threshold"].append(tree.threshold.astype(np.float64))
        parts["nan_left"].append(tree.nan_left.astype(bool))
        parts["zero_missing"].append(tree.zero_missing.astype(bool))
        parts["default_left"].append(tree.default_left.astype(bool))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


_NODE_FIELDS = ("mask", "tree", "feature", "threshold", "nan_left", "zero_missing", "default_left")


def _group(nodes: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """The nodes per input, sorted by tree, then threshold."""
    if not len(nodes["tree"]):
        return {}
    order = np.lexsort((nodes["threshold"], nodes["tree"], nodes["feature"]))
    sorted_nodes = {k: v[order] for k, v in nodes.items()}
    features = sorted_nodes["feature"]
    cuts = np.flatnonzero(np.diff(features)) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(features)]])
    return {
        int(features[a]): {k: v[a:b] for k, v in sorted_nodes.items()}
        for a, b in zip(starts, stops, strict=True)
    }


def _entry_count(nodes: dict[str, np.ndarray]) -> int:
    """Entries the numeric bins will take (a tree is in every bin past its lowest threshold
    on the input), counted before building anything."""
    total = 0
    for group in _group(nodes).values():
        u = np.unique(group["threshold"])
        tree = group["tree"]
        first = np.concatenate([[True], tree[1:] != tree[:-1]])  # sorted by tree, threshold
        total += int((len(u) - np.searchsorted(u, group["threshold"][first])).sum())
    return total


def _bins(group: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """One input's distinct thresholds and per bin (numbers 0..m, NaN, zero) the trees whose
    AND of false-node masks is not all ones, with that AND. `group` is sorted by tree, then
    threshold."""
    u = np.unique(group["threshold"])
    m = len(u)
    j = np.searchsorted(u, group["threshold"])
    tree, mask = group["tree"], group["mask"]
    new_tree = np.concatenate([[True], tree[1:] != tree[:-1]])
    starts = np.flatnonzero(new_tree)
    prefix = mask.copy()  # AND of the tree's nodes so far (thresholds ascending)
    for a, b in zip(starts, np.concatenate([starts[1:], [len(tree)]]), strict=True):
        prefix[a:b] = np.bitwise_and.accumulate(mask[a:b])
    # node k's prefix holds for bins j_k + 1 .. j_next (the next node of its tree, or m)
    has_next = np.concatenate([~new_tree[1:], [False]])
    nxt = np.where(has_next, np.roll(j, -1), m)
    lo, hi = j + 1, nxt
    span = np.maximum(hi - lo + 1, 0)
    b = np.repeat(lo, span) + _ramp(span)
    t = np.repeat(tree, span)
    v = np.repeat(prefix, span)
    order = np.lexsort((t, b))
    b, t, v = b[order], t[order], v[order]
    cut = np.searchsorted(b, np.arange(m + 2))
    bins = [(t[cut[i] : cut[i + 1]], v[cut[i] : cut[i + 1]]) for i in range(m + 1)]
    bins.append(_and_by_tree(tree, mask, ~group["nan_left"]))
    zero_false = np.where(group["zero_missing"], ~group["default_left"], group["threshold"] < 0.0)
    bins.append(_and_by_tree(tree, mask, zero_false))
    return u, bins


def _ramp(span: np.ndarray) -> np.ndarray:
    """0..span[i]-1 for each i, concatenated."""
    total = int(span.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(span) - span, span)
    return np.asarray(np.arange(total, dtype=np.int64) - starts, dtype=np.int64)


def _and_by_tree(
    tree: np.ndarray, mask: np.ndarray, false: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    t, m = tree[false], mask[false]
    if not len(t):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    starts = np.flatnonzero(np.concatenate([[True], t[1:] != t[:-1]]))
    return t[starts], np.bitwise_and.reduceat(m, starts)


def _leaves(trees: tuple[Tree, ...]) -> tuple[np.ndarray, np.ndarray]:
    values = [np.ascontiguousarray(t.leaf_value, dtype=np.float64).reshape(-1) for t in trees]
    sizes = np.asarray([len(v) for v in values], dtype=np.int64)
    return np.concatenate(values), np.cumsum(sizes) - sizes


def _mean_leaf_depth(tree: Tree) -> float:
    if not tree.n_internal:
        return 0.0
    depth = np.zeros(tree.n_internal, dtype=np.int64)
    total = 0
    for i in range(tree.n_internal):  # preorder: a parent comes before its children
        for child in (int(tree.left[i]), int(tree.right[i])):
            if child >= 0:
                depth[child] = depth[i] + 1
            else:
                total += int(depth[i]) + 1
    return total / tree.n_leaves


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(0), dtype=dtype)
