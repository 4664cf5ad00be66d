"""The tree-ensemble IR: every tree as flat numpy arrays, plus what the summed leaves mean.

Plain data (picklable, small, no estimator inside), so that the planner can look at it: every
node test is a function of ONE input feature (`node_goes_left`), which is what lets QuickScorer
masks be split by the table that owns each feature (plan.rules.factorize_trees).

Layout of one `Tree` (m internal nodes, L leaves):
- internal nodes are numbered in preorder (the root is 0, a parent precedes its children);
- leaves are numbered left to right (0..L-1), so a node's left subtree owns a contiguous leaf
  range, as QuickScorer needs;
- `left[i]`/`right[i]` >= 0 name an internal node, < 0 name leaf `~child`;
- `native_leaf[j]` is the leaf's id in the source library (LightGBM leaf index, sklearn node id),
  for leaf-level parity checks.

Node semantics, for the value `x` of feature `feature[i]` after the ensemble's input rule
(`input_rule`: "float32" casts to float32 and back, as scikit-learn trees do; "lightgbm" reads
|x| <= 1e-35f as 0.0, as LightGBM's row parser does; "float64" leaves x as is):

1. x is NaN -> left iff `nan_left[i]` (the library's missing rule, resolved at conversion);
2. `zero_missing[i]` and x == 0 -> left iff `default_left[i]` (LightGBM missing_type Zero);
3. numeric node (`cat_left[i] == -1`) -> left iff x <= threshold[i] (float64 comparison);
4. categorical node -> the category c (`category_rule` "truncate": int(x) as LightGBM's C cast;
   "exact": x itself when it is a non-negative integer, else no category) goes left iff bit c of
   bitset row `cat_left[i]` is set; otherwise right when the category is known (`cat_known[i]`
   == -1 means every category is known; else bit c of that row), else `default_left[i]`.

The ensemble's raw output is `base_score + (sum of leaf_value rows of the exit leaves, each added
to columns tree.output .. tree.output + width) / divisor`, then `link`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from batchscore.kernels.task import Task

Link = Literal["identity", "sigmoid", "softmax", "exp"]
LabelRule = Literal["proba_argmax", "raw_ge0", "raw_gt0", "raw_argmax"]
InputRule = Literal["float64", "float32", "lightgbm"]
CategoryRule = Literal["truncate", "exact"]

LIGHTGBM_ZERO = float(np.float32(1e-35))
"""LightGBM's kZeroThreshold: a value this close to zero is read as zero (and as missing when a
node's missing_type is Zero)."""


class UnsupportedTree(ValueError):
    """The model uses something the IR cannot reproduce exactly (linear leaves, custom links)."""


@dataclass(frozen=True, eq=False)
class Tree:
    feature: np.ndarray  # int32 (m,)
    threshold: np.ndarray  # float64 (m,)
    left: np.ndarray  # int32 (m,)
    right: np.ndarray  # int32 (m,)
    default_left: np.ndarray  # bool (m,)
    nan_left: np.ndarray  # bool (m,)
    zero_missing: np.ndarray  # bool (m,)
    cat_left: np.ndarray  # int32 (m,): -1 numeric, else a row of TreeEnsemble.cat_bitsets
    cat_known: np.ndarray  # int32 (m,): -1 every category known, else a bitset row
    leaf_value: np.ndarray  # float64 (L, width)
    native_leaf: np.ndarray  # int64 (L,)
    output: int = 0  # first output column this tree adds to
    depth: int = field(default=0)

    @property
    def n_internal(self) -> int:
        return int(self.feature.shape[0])

    @property
    def n_leaves(self) -> int:
        return int(self.leaf_value.shape[0])

    def leaf_ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per internal node: first leaf, first leaf of its right subtree, end (exclusive)."""
        m = self.n_internal
        lo, mid, hi = (np.zeros(m, dtype=np.int64) for _ in range(3))
        for i in range(m - 1, -1, -1):  # preorder reversed: children before parents
            a, b = int(self.left[i]), int(self.right[i])
            lo[i] = lo[a] if a >= 0 else ~a
            mid[i] = lo[b] if b >= 0 else ~b
            hi[i] = hi[b] if b >= 0 else ~b + 1
        return lo, mid, hi

    def left_masks(self, words: int) -> np.ndarray:
        """(m, words) uint64: per internal node, its QuickScorer mask, all ones but the leaves
        of its left subtree (leaf j is bit j % 64 of word j // 64). A false node ANDs it in."""
        lo, mid, _ = self.leaf_ranges()
        leaf = np.arange(64 * words)
        cleared = (leaf >= lo[:, None]) & (leaf < mid[:, None])
        bits = cleared.reshape(-1, words, 64).astype(np.uint64) << np.arange(64, dtype=np.uint64)
        return np.asarray(~np.bitwise_or.reduce(bits, axis=2), dtype=np.uint64)


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    trees: tuple[Tree, ...]
    n_features: int
    n_outputs: int
    base_score: np.ndarray  # float64 (n_outputs,)
    link: Link
    task: Task
    classes: tuple[str, ...] | None
    source: str
    objective: str = ""
    divisor: float = 1.0
    link_scale: float = 1.0  # sigmoid(link_scale * raw)
    label_rule: LabelRule = "proba_argmax"
    input_rule: InputRule = "float64"
    category_rule: CategoryRule = "truncate"
    cat_bitsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), dtype=np.uint32))

    @property
    def n_trees(self) -> int:
        return len(self.trees)

    @property
    def max_depth(self) -> int:
        return max((t.depth for t in self.trees), default=0)

    @property
    def max_leaves(self) -> int:
        return max((t.n_leaves for t in self.trees), default=1)

    @property
    def has_categorical(self) -> bool:
        return any((t.cat_left >= 0).any() for t in self.trees)

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """The input rule: float64 values exactly as the source library compares them."""
        return prepare_values(self.input_rule, X)


def prepare_values(rule: InputRule, X: np.ndarray) -> np.ndarray:
    """`rule` applied to X (TreeEnsemble.prepare; also the sparse rows' stored values)."""
    if rule == "float32":
        return X.astype(np.float32).astype(np.float64)
    if rule == "lightgbm":
        tiny = np.abs(X) <= LIGHTGBM_ZERO
        if tiny.any():
            return np.where(tiny, 0.0, X)
    return X


def node_goes_left(ens: TreeEnsemble, tree: Tree, node: int, x: np.ndarray) -> np.ndarray:
    """The test of one internal node over a vector of (prepared) values of its one feature."""
    nodes = NodeParams.of_tree(tree)
    idx = np.full(np.shape(x), node, dtype=np.int64)
    return goes_left(nodes, ens, np.asarray(x, dtype=np.float64), idx)


@dataclass(frozen=True, eq=False)
class NodeParams:
    """Node arrays concatenated (over trees, or one tree) so tests vectorise over node ids."""

    threshold: np.ndarray
    nan_left: np.ndarray
    zero_missing: np.ndarray
    default_left: np.ndarray
    cat_left: np.ndarray
    cat_known: np.ndarray

    @staticmethod
    def of_tree(tree: Tree) -> NodeParams:
        return NodeParams(
            tree.threshold,
            tree.nan_left,
            tree.zero_missing,
            tree.default_left,
            tree.cat_left,
            tree.cat_known,
        )

    @staticmethod
    def concat(parts: list[NodeParams]) -> NodeParams:
        return NodeParams(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in NodeParams.fields())
        )

    @staticmethod
    def fields() -> tuple[str, ...]:
        return ("threshold", "nan_left", "zero_missing", "default_left", "cat_left", "cat_known")

    @property
    def any_zero_missing(self) -> bool:
        return bool(self.zero_missing.any())

    @property
    def any_categorical(self) -> bool:
        return bool((self.cat_left >= 0).any())


def goes_left(p: NodeParams, ens: TreeEnsemble, v: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Vectorised node tests: `v[k]` is the value read by node `idx[k]` (same shapes)."""
    with np.errstate(invalid="ignore"):
        left = v <= p.threshold[idx]
    nan = np.isnan(v)
    has_nan = bool(nan.any())
    if p.any_zero_missing:
        zero = (v == 0.0) & p.zero_missing[idx]
        if zero.any():
            left = np.where(zero, p.default_left[idx], left)
    if p.any_categorical:
        cat_rows = p.cat_left[idx]
        is_cat = cat_rows >= 0
        if is_cat.any():
            left = _categorical(p, ens, v, idx, is_cat, left)
    if has_nan:
        left = np.where(nan, p.nan_left[idx], left)
    return np.asarray(left, dtype=bool)


def _categorical(
    p: NodeParams,
    ens: TreeEnsemble,
    v: np.ndarray,
    idx: np.ndarray,
    is_cat: np.ndarray,
    left: np.ndarray,
) -> np.ndarray:
    bits = ens.cat_bitsets
    cap = 32 * bits.shape[1]
    vv, ii = v[is_cat], idx[is_cat]
    with np.errstate(invalid="ignore"):
        c = np.trunc(vv)
        valid = (c >= 0) & (c < cap)
        if ens.category_rule == "exact":
            valid &= c == vv
    ci = np.where(valid, c, 0).astype(np.int64)
    word, bit = ci >> 5, (ci & 31).astype(np.uint32)
    in_left = valid & (((bits[p.cat_left[ii], word] >> bit) & 1) == 1)
    known_rows = p.cat_known[ii]
    in_known = np.ones_like(in_left)
    has_known = known_rows >= 0
    if has_known.any():
        kr = np.where(has_known, known_rows, 0)
        k = valid & (((bits[kr, word] >> bit) & 1) == 1)
        in_known = np.where(has_known, k, True)
    res = np.where(in_left, True, np.where(in_known, False, p.default_left[ii]))
    out = left.copy()
    out[is_cat] = res
    return out


# ---------------------------------------------------------------- building trees


def build_tree(
    *,
    root: int,
    children: tuple[np.ndarray, np.ndarray],
    is_leaf: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    default_left: np.ndarray,
    nan_left: np.ndarray,
    zero_missing: np.ndarray,
    cat_left: np.ndarray,
    cat_known: np.ndarray,
    leaf_value: np.ndarray,
    native_leaf: np.ndarray,
    output: int = 0,
) -> Tree:
    """Renumber a tree given as one node table (any order): internal in preorder, leaves L->R.

    All arrays are indexed by the source's node id; `leaf_value` rows and `native_leaf` too
    (only the rows of leaves are read).
    """
    left_src, right_src = children
    internal: list[int] = []
    leaves: list[int] = []
    depth = 0
    stack = [(root, 0)]
    while stack:
        node, d = stack.pop()
        if is_leaf[node]:
            leaves.append(node)
            depth = max(depth, d)
            continue
        internal.append(node)
        stack.append((int(right_src[node]), d + 1))
        stack.append((int(left_src[node]), d + 1))
    pos_internal = {n: i for i, n in enumerate(internal)}
    pos_leaf = {n: j for j, n in enumerate(leaves)}

    def child(n: int) -> int:
        return pos_internal[n] if n in pos_internal else ~pos_leaf[n]

    src = np.asarray(internal, dtype=np.int64)
    lv = np.asarray(leaf_value, dtype=np.float64)
    values = lv[np.asarray(leaves, dtype=np.int64)]
    if values.ndim == 1:
        values = values[:, None]
    return Tree(
        feature=np.asarray(feature, dtype=np.int32)[src],
        threshold=np.asarray(threshold, dtype=np.float64)[src],
        left=np.asarray([child(int(left_src[n])) for n in internal], dtype=np.int32),
        right=np.asarray([child(int(right_src[n])) for n in internal], dtype=np.int32),
        default_left=np.asarray(default_left, dtype=bool)[src],
        nan_left=np.asarray(nan_left, dtype=bool)[src],
        zero_missing=np.asarray(zero_missing, dtype=bool)[src],
        cat_left=np.asarray(cat_left, dtype=np.int32)[src],
        cat_known=np.asarray(cat_known, dtype=np.int32)[src],
        leaf_value=np.ascontiguousarray(values),
        native_leaf=np.asarray(native_leaf, dtype=np.int64)[np.asarray(leaves, dtype=np.int64)],
        output=output,
        depth=depth,
    )


def bitset_rows(sets: list[np.ndarray]) -> np.ndarray:
    """uint32 bitset rows (padded to the widest) from lists of non-negative category ids."""
    top = max((int(s.max()) for s in sets if s.size), default=0)
    words = top // 32 + 1
    out = np.zeros((len(sets), words), dtype=np.uint32)
    for r, s in enumerate(sets):
        for c in np.asarray(s, dtype=np.int64):
            out[r, c >> 5] |= np.uint32(1) << np.uint32(c & 31)
    return out


def bitset_members(words: np.ndarray) -> np.ndarray:
    """The category ids set in one uint32 bitset row."""
    w = np.asarray(words, dtype=np.uint64)
    return np.asarray(
        [32 * i + b for i in range(w.shape[0]) for b in range(32) if (int(w[i]) >> b) & 1],
        dtype=np.int64,
    )
