"""Apply rules to a bound plan. `rules=()` gives the naive plan, which tests compare against."""

from __future__ import annotations

from collections.abc import Sequence

from batchscore.plan.nodes import LogicalPlan
from batchscore.plan.rules import RULES, Rule


def optimize(plan: LogicalPlan, rules: Sequence[Rule] = RULES) -> LogicalPlan:
    for rule in rules:
        plan = rule(plan)
    return plan
