"""Scoring strategies over the IR: each maps a prepared float64 batch to exit leaves (n, T).

All of them share the node tests of `ir.goes_left`, so they agree by construction on NaN,
zero-as-missing and categorical semantics; they differ only in how they find the exit leaf:

- traversal: depth-synchronous walk, all rows and all trees at once, one level per step;
- perfect: trees padded to complete binary trees of the ensemble's depth, so the walk is pure
  index arithmetic (child = 2i+1 or 2i+2) with no "am I at a leaf" mask;
- gemm: hummingbird's GEMM form; every node test for every row (the gather `X[:, feature]` is
  the product X @ selector, without 0 * NaN poisoning), then a (nodes x leaves) path matrix
  with +1 / -1 entries; the exit leaf is the one whose row sum equals its count of left-turns;
- bitvector: QuickScorer; leaves numbered left to right, every false node ANDs a uint64 mask
  that clears its left subtree's leaves; the exit leaf is the lowest set bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from batchscore.kernels.trees.ir import NodeParams, TreeEnsemble, goes_left

ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
PERFECT_MAX_DEPTH = 14
"""Padding to 2**depth leaves per tree: beyond this the padded arrays outgrow the model."""


@dataclass(eq=False)
class Packed:
    """Arrays derived from the IR, concatenated over trees (built lazily, never pickled)."""

    ens: TreeEnsemble

    @cached_property
    def node_offset(self) -> np.ndarray:
        sizes = [t.n_internal for t in self.ens.trees]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @cached_property
    def leaf_offset(self) -> np.ndarray:
        sizes = [t.n_leaves for t in self.ens.trees]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @cached_property
    def params(self) -> NodeParams:
        return NodeParams.concat([NodeParams.of_tree(t) for t in self.ens.trees])

    @cached_property
    def feature(self) -> np.ndarray:
        return np.concatenate([t.feature for t in self.ens.trees]).astype(np.intp)

    @cached_property
    def children(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global child ids (internal >= 0, leaf ~global_leaf) and each tree's root."""
        lefts: list[np.ndarray] = []
        rights: list[np.ndarray] = []
        roots: list[int] = []
        for t, tree in enumerate(self.ens.trees):
            no, lo = self.node_offset[t], self.leaf_offset[t]
            for src, dst in ((tree.left, lefts), (tree.right, rights)):
                s = src.astype(np.int64)
                dst.append(np.where(s >= 0, s + no, ~(~s + lo)))
            roots.append(int(no) if tree.n_internal else ~int(lo))
        cat = np.concatenate
        return cat(lefts), cat(rights), np.asarray(roots, dtype=np.int64)

    @cached_property
    def leaf_values(self) -> np.ndarray:
        return np.concatenate([t.leaf_value for t in self.ens.trees], axis=0)

    def all_tests(self, X: np.ndarray) -> np.ndarray:
        """(n, total internal nodes) bool: every node's test for every row."""
        n_nodes = int(self.node_offset[-1])
        idx = np.arange(n_nodes, dtype=np.int64)
        V = X[:, self.feature]
        return goes_left(self.params, self.ens, V, np.broadcast_to(idx, V.shape))

    # ---------------------------------------------------------------- perfect

    @cached_property
    def perfect(self) -> tuple[np.ndarray, NodeParams, np.ndarray, int]:
        """Padded complete trees: feature (T, 2^D-1), params, leaf map (T, 2^D), depth D."""
        D = max(self.ens.max_depth, 1)
        n_int, n_leaf = 2**D - 1, 2**D
        T = self.ens.n_trees
        feat = np.zeros((T, n_int), dtype=np.intp)
        src = np.full((T, n_int), -1, dtype=np.int64)  # global node id, -1 padding
        leaf = np.zeros((T, n_leaf), dtype=np.int64)
        for t, tree in enumerate(self.ens.trees):
            stack = [(0 if tree.n_internal else ~0, 0, 0)]  # (IR child code, position, depth)
            while stack:
                code, pos, d = stack.pop()
                if code >= 0:
                    src[t, pos] = self.node_offset[t] + code
                    feat[t, pos] = tree.feature[code]
                    stack.append((int(tree.left[code]), 2 * pos + 1, d + 1))
                    stack.append((int(tree.right[code]), 2 * pos + 2, d + 1))
                else:  # a leaf at depth d: its padded subtree always goes left
                    span = 2 ** (D - d)
                    first = (pos + 1) * span - 1 - n_int
                    leaf[t, first : first + span] = ~code
        flat = src.reshape(-1)
        pad = flat < 0
        g = np.where(pad, 0, flat)
        p = self.params
        params = NodeParams(
            threshold=np.where(pad, np.inf, p.threshold[g]),
            nan_left=np.where(pad, True, p.nan_left[g]),
            zero_missing=np.where(pad, False, p.zero_missing[g]),
            default_left=np.where(pad, True, p.default_left[g]),
            cat_left=np.where(pad, -1, p.cat_left[g]).astype(np.int32),
            cat_known=np.where(pad, -1, p.cat_known[g]).astype(np.int32),
        )
        return feat, params, leaf, D

    # ---------------------------------------------------------------- gemm

    @cached_property
    def gemm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Node slot map (T, M) into global nodes (-1 pad), path matrix C (T, M, L), counts D."""
        trees = self.ens.trees
        M = max(max((t.n_internal for t in trees), default=0), 1)
        L = self.ens.max_leaves
        T = len(trees)
        slots = np.full((T, M), -1, dtype=np.int64)
        C = np.zeros((T, M, L), dtype=np.float32)
        D = np.full((T, L), -1.0, dtype=np.float32)
        for t, tree in enumerate(trees):
            m = tree.n_internal
            slots[t, :m] = self.node_offset[t] + np.arange(m)
            lo, mid, hi = tree.leaf_ranges()
            D[t, : tree.n_leaves] = 0.0
            for i in range(m):
                C[t, i, lo[i] : mid[i]] = 1.0
                C[t, i, mid[i] : hi[i]] = -1.0
                D[t, lo[i] : mid[i]] += 1.0
        return slots, C, D

    # ---------------------------------------------------------------- bitvector

    @cached_property
    def bitvector(self) -> tuple[np.ndarray, np.ndarray]:
        """Node slot map (T, M) (-1 pad) and masks (T, M, W) uint64 clearing left subtrees."""
        trees = self.ens.trees
        M = max(max((t.n_internal for t in trees), default=0), 1)
        W = (self.ens.max_leaves + 63) // 64
        T = len(trees)
        slots = np.full((T, M), -1, dtype=np.int64)
        masks = np.full((T, M, W), ALL_ONES, dtype=np.uint64)
        for t, tree in enumerate(trees):
            m = tree.n_internal
            slots[t, :m] = self.node_offset[t] + np.arange(m)
            masks[t, :m] = tree.left_masks(W)
        return slots, masks


def chunk_rows(n_nodes: int, width: int = 1) -> int:
    """Rows per chunk so that the (rows x nodes x width) temporaries stay near 32 MiB."""
    return int(max(16, min(65536, (1 << 22) // max(1, n_nodes * width))))


def leaves_traversal(P: Packed, X: np.ndarray) -> np.ndarray:
    left_c, right_c, roots = P.children
    n, T = X.shape[0], P.ens.n_trees
    node = np.broadcast_to(roots, (n, T)).copy()
    rows = np.arange(n)[:, None]
    for _ in range(P.ens.max_depth):
        active = node >= 0
        if not active.any():
            break
        g = np.where(active, node, 0)
        v = X[rows, P.feature[g]]
        go = goes_left(P.params, P.ens, v, g)
        node = np.where(active, np.where(go, left_c[g], right_c[g]), node)
    return np.asarray(~node - P.leaf_offset[:-1])


def leaves_perfect(P: Packed, X: np.ndarray) -> np.ndarray:
    feat, params, leaf, D = P.perfect
    n, T = X.shape[0], P.ens.n_trees
    n_int = 2**D - 1
    base = (np.arange(T, dtype=np.int64) * n_int)[None, :]
    flat_feat = feat.reshape(-1)
    idx = np.zeros((n, T), dtype=np.int64)
    rows = np.arange(n)[:, None]
    for _ in range(D):
        g = base + idx
        v = X[rows, flat_feat[g]]
        go = goes_left(params, P.ens, v, g)
        idx = 2 * idx + 2 - go
    return np.asarray(leaf[np.arange(T)[None, :], idx - n_int])


def leaves_gemm(P: Packed, X: np.ndarray) -> np.ndarray:
    slots, C, D = P.gemm
    tests = P.all_tests(X)
    pad = slots < 0
    t3 = tests[:, np.where(pad, 0, slots)]  # (n, T, M)
    t3 = np.where(pad[None], False, t3).astype(np.float32)
    S = np.matmul(t3.transpose(1, 0, 2), C)  # (T, n, L)
    hit = S == D[:, None, :]
    return np.asarray(np.argmax(hit, axis=2).T, dtype=np.int64)


def leaves_bitvector(P: Packed, X: np.ndarray) -> np.ndarray:
    slots, masks = P.bitvector
    tests = P.all_tests(X)
    n, (T, M, W) = X.shape[0], masks.shape
    v = np.full((n, T, W), ALL_ONES, dtype=np.uint64)
    pad = slots < 0
    for j in range(M):
        live = ~pad[:, j]
        cols = np.where(live, slots[:, j], 0)
        false = ~tests[:, cols] & live[None, :]  # (n, T): node j of each tree tested false
        if false.any():
            v &= np.where(false[:, :, None], masks[None, :, j, :], ALL_ONES)
    return first_set_leaf(v)


def first_set_leaf(v: np.ndarray) -> np.ndarray:
    """(n, T, W) uint64 leaf masks -> (n, T) index of the lowest set bit: the exit leaf."""
    if v.shape[2] == 1:
        return _lowest_bit(v[:, :, 0])
    word = np.argmax(v != 0, axis=2)
    low = np.take_along_axis(v, word[:, :, None], axis=2)[:, :, 0]
    return np.asarray(word.astype(np.int64) * 64 + _lowest_bit(low))


def _lowest_bit(v: np.ndarray) -> np.ndarray:
    """Index of the lowest set bit of each uint64 (exact: a power of two is a float64)."""
    low = v & (~v + np.uint64(1))
    return (np.frexp(low.astype(np.float64))[1] - 1).astype(np.int64)


LEAF_FUNCTIONS = {
    "traversal": leaves_traversal,
    "perfect": leaves_perfect,
    "gemm": leaves_gemm,
    "bitvector": leaves_bitvector,
}
