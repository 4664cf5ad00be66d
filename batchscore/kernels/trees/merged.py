"""Several tree ensembles over one feature set, scored as one ensemble.

The numpy strategies pay per level (traversal, perfect) or per node slot (gemm, bitvector) a
fixed Python and gather cost over (rows x trees); concatenating the trees of k models pays it
once. Each model then takes its own slice of exit leaves and finishes with its own code
(`TreeEnsembleKernel.raw_from_leaves`, `finish`), so the outputs are bit-identical to scoring
the models one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from batchscore.errors import ModelError
from batchscore.kernels.base import Matrix, ScoreOutput
from batchscore.kernels.trees.ir import Tree, TreeEnsemble
from batchscore.kernels.trees.kernel import TreeEnsembleKernel, try_compile


def merge_key(kernel: TreeEnsembleKernel) -> tuple[str, str, str]:
    """Kernels merge only when node tests read values the same way and use one strategy."""
    return (kernel.strategy, kernel.ir.input_rule, kernel.ir.category_rule)


def merged_ensemble(
    kernels: Sequence[TreeEnsembleKernel],
    columns: Sequence[np.ndarray],
    width: int,
    *,
    own_outputs: bool = False,
) -> TreeEnsemble:
    """Every tree of `kernels`, features renumbered into the union input (`columns[i]`: the
    union column of each of model i's inputs), categorical bitset rows concatenated.

    With `own_outputs` each model's trees add to its own block of output columns (model i's
    outputs follow model i-1's), so one compiled pass yields every model's sums."""
    words = max(k.ir.cat_bitsets.shape[1] for k in kernels)
    bitsets: list[np.ndarray] = []
    trees: list[Tree] = []
    offset = 0
    first_output = 0
    for kernel, cols in zip(kernels, columns, strict=True):
        ir = kernel.ir
        rows = ir.cat_bitsets.shape[0]
        padded = np.zeros((rows, words), dtype=np.uint32)
        padded[:, : ir.cat_bitsets.shape[1]] = ir.cat_bitsets
        bitsets.append(padded)
        for tree in ir.trees:
            trees.append(
                replace(
                    tree,
                    feature=np.asarray(cols, dtype=np.int32)[tree.feature],
                    cat_left=np.where(tree.cat_left >= 0, tree.cat_left + offset, -1).astype(
                        np.int32
                    ),
                    cat_known=np.where(tree.cat_known >= 0, tree.cat_known + offset, -1).astype(
                        np.int32
                    ),
                    output=first_output + tree.output if own_outputs else 0,
                )
            )
        offset += rows
        first_output += ir.n_outputs
    first = kernels[0].ir
    return TreeEnsemble(
        trees=tuple(trees),
        n_features=width,
        n_outputs=first_output if own_outputs else 1,
        base_score=np.zeros(first_output if own_outputs else 1),
        link="identity",
        task="regression",
        classes=None,
        source="merged: " + ", ".join(k.ir.source for k in kernels),
        input_rule=first.input_rule,
        category_rule=first.category_rule,
        cat_bitsets=np.vstack(bitsets) if bitsets else np.zeros((0, 1), dtype=np.uint32),
    )


@dataclass(frozen=True, eq=False)
class TreeGroup:
    """Tree models scored together: one leaf search over all their trees, then each model's own
    sums and link on its slice of leaves."""

    names: tuple[str, ...]
    merged: TreeEnsembleKernel
    members: tuple[TreeEnsembleKernel, ...]
    slices: tuple[slice, ...]
    """Each member's trees (numpy strategies) or output columns (compiled) in the merged pass."""

    @staticmethod
    def build(
        names: Sequence[str],
        kernels: Sequence[TreeEnsembleKernel],
        columns: Sequence[np.ndarray],
        width: int,
    ) -> TreeGroup:
        strategy = kernels[0].strategy
        compiled = strategy == "compiled"
        ens = merged_ensemble(kernels, columns, width, own_outputs=compiled)
        slices, at = [], 0
        for kernel in kernels:
            size = kernel.ir.n_outputs if compiled else kernel.ir.n_trees
            slices.append(slice(at, at + size))
            at += size
        forest = None
        if compiled:
            forest, problem = try_compile(ens)
            if forest is None:  # the members compiled, so this is rare: score them apart
                raise ModelError(f"merging {len(kernels)} compiled tree models failed: {problem}")
        merged = TreeEnsembleKernel(
            ens, strategy, reason=f"{strategy}, shared by the group", compiled=forest
        )
        return TreeGroup(tuple(names), merged, tuple(kernels), tuple(slices))

    def score(self, X: Matrix, proba: Sequence[bool]) -> list[ScoreOutput]:
        if self.merged.strategy == "compiled":
            sums = self.merged.raw(X)  # merged base is 0 and divisor 1: the plain sums
            return [
                member.finish(member.raw_from_sums(sums[:, part]), proba=flag)
                for member, part, flag in zip(self.members, self.slices, proba, strict=True)
            ]
        leaves = self.merged.leaves(X)
        return [
            member.finish(member.raw_from_leaves(leaves[:, part]), proba=flag)
            for member, part, flag in zip(self.members, self.slices, proba, strict=True)
        ]

    def describe(self) -> str:
        ens = self.merged.ir
        what = "compiled pass" if self.merged.strategy == "compiled" else "leaf search"
        return (
            f"one {self.merged.strategy} {what} over {ens.n_trees} trees "
            f"({ens.n_features} union inputs) instead of {len(self.members)}"
        )
