"""The job's `where` as conjuncts, so partition predicates can prune files before Spark runs."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from batchscore.errors import SpecError, first_line
from batchscore.plan.catalog import PartitionFilter

_OPS: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.NEQ: "!=",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
}
_FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "=": "=", "!=": "!="}


def parse_where(where: str) -> exp.Expr:
    try:
        return sqlglot.parse_one(where, read="spark")
    except ParseError as exc:
        first = first_line(exc)
        raise SpecError(
            f"source.where '{where}' is not a valid Spark SQL predicate ({first}). "
            "Fix the expression."
        ) from None


def referenced_columns(where: str) -> set[str]:
    return {col.name for col in parse_where(where).find_all(exp.Column)}


def partition_filters(where: str, partition_columns: list[str]) -> list[PartitionFilter]:
    """Conjuncts of `where` that compare a partition column with literals, as delta-rs filters.

    Only AND-ed simple comparisons qualify; everything else stays in the residual predicate that
    Spark applies anyway, so pruning can only drop files that could not match.
    """
    tree = parse_where(where)
    conjuncts = list(tree.flatten()) if isinstance(tree, exp.And) else [tree]
    out: list[PartitionFilter] = []
    for term in conjuncts:
        if isinstance(term, exp.Paren):
            term = term.this
        out.extend(_as_filters(term, set(partition_columns)))
    return out


def _as_filters(term: exp.Expr, partitions: set[str]) -> list[PartitionFilter]:
    op = _OPS.get(type(term))
    if op is not None:
        left, right = term.this, term.expression
        if isinstance(right, exp.Column) and isinstance(left, exp.Literal):
            left, right, op = right, left, _FLIP[op]
        if (
            isinstance(left, exp.Column)
            and left.name in partitions
            and isinstance(right, exp.Literal)
        ):
            return [(left.name, op, right.this)]
        return []
    if (
        isinstance(term, exp.In)
        and isinstance(term.this, exp.Column)
        and term.this.name in partitions
    ):
        values = term.expressions
        if values and all(isinstance(v, exp.Literal) for v in values):
            return [(term.this.name, "in", [v.this for v in values])]
        return []
    if (
        isinstance(term, exp.Between)
        and isinstance(term.this, exp.Column)
        and term.this.name in partitions
    ):
        low, high = term.args.get("low"), term.args.get("high")
        if isinstance(low, exp.Literal) and isinstance(high, exp.Literal):
            return [(term.this.name, ">=", low.this), (term.this.name, "<=", high.this)]
    return []
