"""Optimizer rules: one module each, applied in the order of RULES."""

from __future__ import annotations

from collections.abc import Callable

from batchscore.plan.nodes import LogicalPlan
from batchscore.plan.rules.prune_columns import prune_columns
from batchscore.plan.rules.prune_partitions import prune_partitions

Rule = Callable[[LogicalPlan], LogicalPlan]

RULES: tuple[Rule, ...] = (prune_partitions, prune_columns)

__all__ = ["RULES", "Rule", "prune_columns", "prune_partitions"]
