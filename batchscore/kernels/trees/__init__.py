"""Tree ensembles as arrays: the IR, its scoring strategies, and the kernel that picks one."""

from batchscore.kernels.trees.ir import (
    LIGHTGBM_ZERO,
    Tree,
    TreeEnsemble,
    UnsupportedTree,
    build_tree,
    node_goes_left,
)
from batchscore.kernels.trees.kernel import (
    STRATEGIES,
    TreeEnsembleKernel,
    check_strategy,
    choose_strategy,
)

__all__ = [
    "LIGHTGBM_ZERO",
    "STRATEGIES",
    "Tree",
    "TreeEnsemble",
    "TreeEnsembleKernel",
    "UnsupportedTree",
    "build_tree",
    "check_strategy",
    "choose_strategy",
    "node_goes_left",
]
