"""Tree ensembles split by the table that owns each split's feature (factorized QuickScorer).

QuickScorer finds a tree's exit leaf as the lowest set bit of the AND of the masks of every node
whose test is false (leaves numbered left to right; a false node clears its left subtree's
leaves). AND is associative and each node reads one feature, so the AND splits by table:

- on the dimension side, once per dimension row, the AND over the nodes whose features live in
  that dimension (its whole subtree: a snowflake's own dimensions are joined into it first);
- a tree whose every split reads one dimension collapses further: its exit leaf, hence its leaf
  value, depends on the dimension row alone, so the dimension row carries the summed values;
- on the fact side: the AND over the fact's own nodes, AND the joined words, lowest set bit,
  leaf values gathered, the dimension's collapsed sums added, the link applied last.

A fact row whose key has no dimension row (or a null key) gets what the materialized left join
would give it: the words and sums of an all-null dimension row, computed at plan time, so the
model's missing-value rules apply exactly as if the features had been joined.

Words cross Spark as array<double> values holding 32 bits each: integers below 2^32 are exact in
a float64 and survive any engine, unlike bit-cast doubles (NaN payloads). A NaN therefore means
"no dimension row", never a word.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from batchscore.errors import DataError
from batchscore.kernels.base import Matrix
from batchscore.kernels.trees.compiled.codegen import WordTests
from batchscore.kernels.trees.compiled.forest import CompiledForest, ForestLoadError, compile_forest
from batchscore.kernels.trees.compiled.toolchain import CompileError
from batchscore.kernels.trees.ir import NodeParams, TreeEnsemble, goes_left
from batchscore.kernels.trees.kernel import TreeEnsembleKernel
from batchscore.kernels.trees.strategies import ALL_ONES, chunk_rows, first_set_leaf

FACT = 0
"""Group 0: every input the fact side holds (fact columns and materialized dimensions)."""

LOW32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True, eq=False)
class MaskSet:
    """The nodes of some trees that read one group's inputs, laid out as QuickScorer slots.

    `trees` are indexes into the ensemble; slot (t, j) holds the j-th such node of trees[t]
    (a row of `feature`/`params`, -1 when the tree has fewer); `masks[t, j]` clears the node's
    left subtree. `feature` indexes the group's own input columns.
    """

    trees: np.ndarray  # (T,) int64
    slots: np.ndarray  # (T, M) int64
    feature: np.ndarray  # (N,) intp
    params: NodeParams
    masks: np.ndarray  # (T, M, W) uint64
    words32: int  # 32-bit words that hold every leaf of these trees

    @property
    def n_trees(self) -> int:
        return int(self.trees.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    def and_masks(self, ens: TreeEnsemble, X: np.ndarray) -> np.ndarray:
        """(n, T, W) uint64: per row and tree, the AND of the masks of its false nodes here."""
        T, M, W = self.masks.shape
        n = X.shape[0]
        v = np.full((n, T, W), ALL_ONES, dtype=np.uint64)
        if self.n_nodes == 0 or n == 0:
            return v
        step = chunk_rows(self.n_nodes + T * W)
        for start in range(0, n, step):
            part = X[start : start + step]
            values = part[:, self.feature]
            idx = np.broadcast_to(np.arange(self.n_nodes), values.shape)
            false = ~goes_left(self.params, ens, values, idx)
            out = v[start : start + step]
            for j in range(M):
                live = self.slots[:, j] >= 0
                hit = false[:, np.where(live, self.slots[:, j], 0)] & live[None, :]
                if hit.any():
                    out &= np.where(hit[:, :, None], self.masks[None, :, j, :], ALL_ONES)
        return v


def mask_set(ens: TreeEnsemble, trees: list[int], owner: np.ndarray, group: int) -> MaskSet:
    """The MaskSet of `trees` over the nodes whose feature belongs to `group`.

    `owner[f]` is the group of model input f; group inputs are numbered in model input order.
    """
    local = np.cumsum(owner == group) - 1
    picked: list[list[tuple[int, int]]] = []
    for t in trees:
        tree = ens.trees[t]
        picked.append([(t, i) for i in range(tree.n_internal) if owner[tree.feature[i]] == group])
    M = max((len(p) for p in picked), default=0)
    W = max(((ens.trees[t].n_leaves + 63) // 64 for t in trees), default=1)
    slots = np.full((len(trees), M), -1, dtype=np.int64)
    masks = np.full((len(trees), M, W), ALL_ONES, dtype=np.uint64)
    feature: list[int] = []
    params: list[NodeParams] = []
    for r, nodes in enumerate(picked):
        tree = ens.trees[trees[r]]
        left = tree.left_masks(W)
        for j, (_, i) in enumerate(nodes):
            slots[r, j] = len(feature)
            feature.append(int(local[tree.feature[i]]))
            params.append(_node_params(tree, i))
            masks[r, j] = left[i]
    words32 = max(((ens.trees[t].n_leaves + 31) // 32 for t in trees), default=1)
    return MaskSet(
        trees=np.asarray(trees, dtype=np.int64),
        slots=slots,
        feature=np.asarray(feature, dtype=np.intp),
        params=NodeParams.concat(params) if params else _no_params(),
        masks=masks,
        words32=words32,
    )


def _node_params(tree: Any, i: int) -> NodeParams:
    sl = slice(i, i + 1)
    return NodeParams(
        tree.threshold[sl],
        tree.nan_left[sl],
        tree.zero_missing[sl],
        tree.default_left[sl],
        tree.cat_left[sl],
        tree.cat_known[sl],
    )


def _no_params() -> NodeParams:
    empty_f, empty_b, empty_i = np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int32)
    return NodeParams(empty_f, empty_b, empty_b, empty_b, empty_i, empty_i)


# ---------------------------------------------------------------- word transport


def pack_words(v: np.ndarray, words32: int) -> np.ndarray:
    """(n, T, W) uint64 -> (n, T * words32) float64 of exact 32-bit integers."""
    n, T, W = v.shape
    halves = np.empty((n, T, 2 * W), dtype=np.float64)
    halves[:, :, 0::2] = (v & LOW32).astype(np.float64)
    halves[:, :, 1::2] = (v >> np.uint64(32)).astype(np.float64)
    return np.ascontiguousarray(halves[:, :, :words32]).reshape(n, T * words32)


def unpack_words(block: np.ndarray, T: int, W: int, words32: int) -> np.ndarray:
    """The inverse of `pack_words`; leaves beyond words32 * 32 read as set (never the exit)."""
    n = block.shape[0]
    halves = np.full((n, T, 2 * W), float(LOW32), dtype=np.float64)
    halves[:, :, :words32] = block.reshape(n, T, words32)
    ints = halves.astype(np.uint64)
    out: np.ndarray = ints[:, :, 0::2] | (ints[:, :, 1::2] << np.uint64(32))
    return out


# ---------------------------------------------------------------- dimension side


@dataclass(frozen=True, eq=False)
class TablePartial:
    """One tree model's share of one dimension: words of split trees, sums of collapsed ones.

    Runs on executors once per dimension row. `split` covers the trees that also read other
    groups (only their nodes on this dimension); `whole` the trees that read nothing else.
    """

    ens: TreeEnsemble  # trees kept: node tests need the bitsets and the input rule
    split: MaskSet
    whole: MaskSet
    n_inputs: int

    @property
    def mask_width(self) -> int:
        return self.split.n_trees * self.split.words32

    @property
    def sum_width(self) -> int:
        return self.ens.n_outputs if self.whole.n_trees else 0

    def __call__(self, X: Matrix) -> list[np.ndarray]:
        dense = _dense(X, self.n_inputs, "dimension partial")
        prepared = self.ens.prepare(dense)
        out: list[np.ndarray] = []
        if self.mask_width:
            v = self.split.and_masks(self.ens, prepared)
            out.append(pack_words(v, self.split.words32))
        if self.sum_width:
            v = self.whole.and_masks(self.ens, prepared)
            out.append(leaf_sums(self.ens, self.whole.trees, first_set_leaf(v)))
        return out

    def missing_row(self) -> list[np.ndarray]:
        """What a fact row without a dimension row gets: this partial of all-NaN inputs."""
        return [a[0] for a in self(np.full((1, self.n_inputs), np.nan))]


def leaf_sums(ens: TreeEnsemble, trees: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """(n, n_outputs): sum of the exit leaves' values of `trees`, each into its output columns."""
    n = leaves.shape[0]
    total = np.zeros((n, ens.n_outputs))
    for c, t in enumerate(trees):
        tree = ens.trees[int(t)]
        values = tree.leaf_value[leaves[:, c]]
        total[:, tree.output : tree.output + values.shape[1]] += values
    return total


# ---------------------------------------------------------------- fact side


@dataclass(frozen=True, eq=False)
class JoinedPartial:
    """Where one dimension's partial sits in the fact-side matrix, and its missing-row value."""

    table: str
    split_trees: np.ndarray  # indexes into FactSide.trees
    words32: int
    mask_offset: int
    sum_offset: int  # -1: no collapsed trees on this dimension
    missing_words: np.ndarray  # (T_split, W) uint64
    missing_sums: np.ndarray  # (n_outputs,)

    def missing_fill(self) -> list[tuple[int, np.ndarray]]:
        """(first column, values) of this dimension's words and sums for a fact row without a
        dimension row (NaN there): those of an all-null dimension row."""
        cols: list[tuple[int, np.ndarray]] = []
        if self.split_trees.shape[0]:
            packed = pack_words(self.missing_words[None, :, :], self.words32)[0]
            cols.append((self.mask_offset, packed))
        if self.sum_offset >= 0:
            cols.append((self.sum_offset, self.missing_sums))
        return cols


@dataclass(frozen=True, eq=False)
class FactSide:
    """The split trees' fact nodes and the joined partials, in the fact-side input order."""

    fact: MaskSet  # over every split tree; feature indexes the first n_fact inputs
    n_fact: int
    joined: tuple[JoinedPartial, ...]
    n_inputs: int


class FactorizedTreeKernel(TreeEnsembleKernel):
    """The fact side of a factorized tree ensemble: same outputs, fewer inputs joined.

    With a C compiler on the driver the fact side is compiled (`fact_forest`: the split trees
    walked with word tests, codegen's docstring); without one, numpy QuickScorer.
    """

    def __init__(
        self,
        ir: TreeEnsemble,
        side: FactSide,
        *,
        origin: str,
        fact_forest: CompiledForest | None = None,
    ) -> None:
        super().__init__(ir, "bitvector", reason=f"factorized; the model alone: {origin}")
        self.side = side
        self.n_features = side.n_inputs
        self.fact_forest = fact_forest

    def leaves(self, X: Matrix, strategy: str | None = None) -> np.ndarray:
        raise NotImplementedError("a factorized kernel finds leaves from joined words")

    def tree_ir(self) -> TreeEnsemble | None:
        """None: its inputs are the fact side's and the joined words, no longer the IR's
        features, so no plan rule may split it again."""
        return None

    def compiled_forests(self) -> tuple[CompiledForest, ...]:
        own = super().compiled_forests()
        return own if self.fact_forest is None else (*own, self.fact_forest)

    def raw(self, X: Matrix) -> np.ndarray:
        side, ens = self.side, self.ir
        dense = _dense(X, side.n_inputs, f"factorized {ens.source}")
        forest = self._fact_forest()
        if forest is not None:
            dense = _with_missing_filled(dense, side)
            total = np.zeros((dense.shape[0], ens.n_outputs))
            for part in side.joined:
                if part.sum_offset >= 0:
                    total += dense[:, part.sum_offset : part.sum_offset + ens.n_outputs]
            total += forest.sums(dense)
            return self.raw_from_sums(total)
        return self._raw_numpy(dense)

    def _fact_forest(self) -> CompiledForest | None:
        if self.fact_forest is None or self._compiled_broken:
            return None
        try:
            self.fact_forest.handle()
        except ForestLoadError as exc:
            self._compiled_broken = str(exc)
            return None
        return self.fact_forest

    def _raw_numpy(self, dense: np.ndarray) -> np.ndarray:
        side, ens = self.side, self.ir
        v = side.fact.and_masks(ens, ens.prepare(dense[:, : side.n_fact]))
        total = np.zeros((dense.shape[0], ens.n_outputs))
        for part in side.joined:
            T, W = part.split_trees.shape[0], side.fact.masks.shape[2]
            if T:
                block = dense[:, part.mask_offset : part.mask_offset + T * part.words32]
                words = unpack_words(np.nan_to_num(block), T, W, part.words32)
                absent = np.isnan(block[:, 0])
                if absent.any():
                    words[absent] = part.missing_words
                v[:, part.split_trees, :] &= words
            if part.sum_offset >= 0:
                sums = dense[:, part.sum_offset : part.sum_offset + ens.n_outputs]
                absent = np.isnan(sums[:, 0])
                if absent.any():
                    sums = sums.copy()
                    sums[absent] = part.missing_sums
                total += sums
        total += leaf_sums(ens, side.fact.trees, first_set_leaf(v))
        return self.raw_from_sums(total)

    def describe(self) -> str:
        side = self.side
        how = (
            "compiled: walks the split trees with word tests"
            if self.fact_forest is not None
            else f"numpy: ANDs {side.fact.n_nodes} node test(s) with joined words"
        )
        joined = ", ".join(
            f"{p.table}: {p.split_trees.shape[0]} split tree(s) x {p.words32} word(s)"
            + (", collapsed sums" if p.sum_offset >= 0 else "")
            for p in side.joined
        )
        return (
            f"tree_ensemble ({self.ir.source}, {self.ir.n_trees} trees) factorized: fact side "
            f"{how} of {side.fact.n_trees} tree(s) ({joined}); leaf values "
            "-> link"
        )


def _with_missing_filled(dense: np.ndarray, side: FactSide) -> np.ndarray:
    """`dense`, or a copy with absent dimension rows' words and sums filled in."""
    out = dense
    for part in side.joined:
        for offset, value in part.missing_fill():
            absent = np.isnan(dense[:, offset])
            if absent.any():
                if out is dense:
                    out = dense.copy()
                out[absent, offset : offset + value.shape[0]] = value
    return out


def _dense(X: Matrix, width: int, what: str) -> np.ndarray:
    matrix: Any = X
    dense = np.asarray(matrix.toarray() if sp.issparse(matrix) else matrix, dtype=np.float64)
    if dense.ndim != 2 or dense.shape[1] != width:
        raise DataError(f"Kernel {what} expects {width} inputs per row, got {dense.shape[1:]}.")
    return dense


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class Factorization:
    """A tree ensemble split by input group: dimension partials and the fact-side kernel."""

    partials: dict[int, TablePartial]
    kernel: FactorizedTreeKernel


def tree_groups(ens: TreeEnsemble, owner: np.ndarray) -> list[set[int]]:
    """The groups each tree's nodes read."""
    return [{int(owner[f]) for f in tree.feature} for tree in ens.trees]


def factorize_ensemble(
    ens: TreeEnsemble, owner: np.ndarray, tables: dict[int, str], *, origin: str
) -> Factorization:
    """Split `ens` by `owner` (model input -> group; FACT or a key of `tables`).

    The fact-side inputs are the FACT inputs in model order, then per dimension group (in
    `tables` order) its words, then its collapsed sums.
    """
    reads = tree_groups(ens, owner)
    collapsed = {g: [t for t, r in enumerate(reads) if r == {g}] for g in tables}
    whole = {t for ts in collapsed.values() for t in ts}
    split = [t for t in range(ens.n_trees) if t not in whole]
    n_fact = int((owner == FACT).sum())
    partials: dict[int, TablePartial] = {}
    joined: list[JoinedPartial] = []
    offset = n_fact
    position = {t: i for i, t in enumerate(split)}
    for g, table in tables.items():
        split_here = [t for t in split if g in reads[t]]
        partial = TablePartial(
            ens,
            mask_set(ens, split_here, owner, g),
            mask_set(ens, collapsed[g], owner, g),
            int((owner == g).sum()),
        )
        partials[g] = partial
        missing = partial.missing_row()
        words = np.zeros((0, 0), dtype=np.uint64)
        sums = np.zeros(ens.n_outputs)
        if partial.mask_width:
            W = max(((ens.trees[t].n_leaves + 63) // 64 for t in split), default=1)
            words = unpack_words(missing[0][None, :], len(split_here), W, partial.split.words32)[0]
        if partial.sum_width:
            sums = missing[-1]
        joined.append(
            JoinedPartial(
                table=table,
                split_trees=np.asarray([position[t] for t in split_here], dtype=np.int64),
                words32=partial.split.words32,
                mask_offset=offset,
                sum_offset=offset + partial.mask_width if partial.sum_width else -1,
                missing_words=words,
                missing_sums=sums,
            )
        )
        offset += partial.mask_width + partial.sum_width
    fact = mask_set(ens, split, owner, FACT)
    side = FactSide(fact=fact, n_fact=n_fact, joined=tuple(joined), n_inputs=offset)
    forest = compile_fact_side(ens, side, owner, split, groups={g: i for i, g in enumerate(tables)})
    kernel = FactorizedTreeKernel(ens, side, origin=origin, fact_forest=forest)
    return Factorization(partials, kernel)


def compile_fact_side(
    ens: TreeEnsemble,
    side: FactSide,
    owner: np.ndarray,
    split: list[int],
    *,
    groups: dict[int, int],
) -> CompiledForest | None:
    """The split trees over the fact-side inputs, dimension nodes as word tests; None when
    there is no compiler (numpy QuickScorer then)."""
    if not split:
        return None
    fact_index = np.cumsum(owner == FACT) - 1
    trees = []
    words: WordTests = {}
    for p, t in enumerate(split):
        tree = ens.trees[t]
        lo, mid, _ = tree.leaf_ranges()
        feature = np.zeros(tree.n_internal, dtype=np.int32)
        for i in range(tree.n_internal):
            g = int(owner[tree.feature[i]])
            if g == FACT:
                feature[i] = fact_index[tree.feature[i]]
                continue
            part = side.joined[groups[g]]
            q = int(np.flatnonzero(part.split_trees == p)[0])
            base = part.mask_offset + q * part.words32
            words[(p, i)] = _range_masks(base, int(lo[i]), int(mid[i]))
        trees.append(replace(tree, feature=feature))
    fact_ens = replace(ens, trees=tuple(trees), n_features=side.n_inputs)
    try:
        return compile_forest(fact_ens, words=words, prepared=side.n_fact)
    except CompileError:
        return None


def _range_masks(base: int, lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    """(column, 32-bit mask) pairs covering leaves [lo, hi) of words starting at `base`."""
    out: list[tuple[int, int]] = []
    for k in range(lo // 32, (hi - 1) // 32 + 1):
        a, b = max(lo, 32 * k), min(hi, 32 * k + 32)
        mask = ((1 << (b - a)) - 1) << (a - 32 * k)
        out.append((base + k, mask))
    return tuple(out)
