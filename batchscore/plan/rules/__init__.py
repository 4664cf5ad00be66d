"""Optimizer rules: one module each, applied in the order of RULES."""

from __future__ import annotations

from collections.abc import Callable

from batchscore.plan.nodes import LogicalPlan
from batchscore.plan.rules.batch_models import batch_models
from batchscore.plan.rules.eliminate_unused_joins import eliminate_unused_joins
from batchscore.plan.rules.factorize_linear import factorize_linear
from batchscore.plan.rules.factorize_trees import factorize_trees
from batchscore.plan.rules.prune_columns import prune_columns
from batchscore.plan.rules.prune_partitions import prune_partitions

Rule = Callable[[LogicalPlan], LogicalPlan]

RULES: tuple[Rule, ...] = (
    eliminate_unused_joins,
    prune_partitions,
    factorize_linear,
    factorize_trees,
    batch_models,
    prune_columns,
)

__all__ = [
    "RULES",
    "Rule",
    "batch_models",
    "eliminate_unused_joins",
    "factorize_linear",
    "factorize_trees",
    "prune_columns",
    "prune_partitions",
]
