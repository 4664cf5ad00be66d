"""Logical plans, optimizer rules and `explain`: no Spark here, so tests run in milliseconds."""

from batchscore.plan.bind import bind
from batchscore.plan.explain import explain
from batchscore.plan.nodes import LogicalPlan
from batchscore.plan.optimizer import optimize
from batchscore.plan.rules import RULES

__all__ = ["RULES", "LogicalPlan", "bind", "explain", "optimize"]
