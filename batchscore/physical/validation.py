"""Validation rules (monitor.rules) as Spark expressions over the joined, unscored rows.

Every row rule becomes a non-null boolean column ("this row violates the rule"), so the
predictions (`NOT any quarantine violation`) and the quarantine table (`any`) partition the
selected rows exactly. Before anything is committed, `check_rows` runs one aggregation over the
rule columns only: per rule, the rows violating it and one example value, and the null share of
every feature a `null_rate` rule watches. A `fail` rule with violations stops the run there
(DataError, exit 2), so nothing is committed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from batchscore.errors import DataError, SpecError, first_line
from batchscore.monitor.health import type_changes
from batchscore.monitor.rules import Rule
from batchscore.physical.input_stack import InputStack
from batchscore.physical.task_files import (
    read_task_files,
    remove_task_files,
    task_name,
    write_task_file,
)
from batchscore.plan.nodes import LogicalPlan, qualified

_QUALIFIED = re.compile(r"(?<![\w`.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?![\w`(])")


@dataclass(frozen=True)
class RuleOutcome:
    rule: Rule
    rows: int
    example: str | None = None
    rate: float | None = None
    """null_rate rules: the run's null share."""

    @property
    def violated(self) -> bool:
        if self.rule.kind == "type":
            return self.example is not None
        if self.rule.kind == "null_rate":
            return (
                self.rate is not None
                and self.rule.limit is not None
                and self.rate > self.rule.limit
            )
        return self.rows > 0

    def message(self) -> str:
        rule = self.rule
        owner = ""
        if rule.model:
            owner = f" (model{'s' if ',' in rule.model else ''} {rule.model})"
        if rule.kind == "type":
            return (
                f"Validation rule '{rule.name}'{owner} ({rule.action}): {rule.column} is "
                f"{self.example} now, not {rule.dtype} as in the training data"
            )
        if rule.kind == "null_rate":
            return (
                f"Validation rule '{rule.name}'{owner} ({rule.action}): {self.rate:.2%} of "
                f"{self.rows:,} rows are null; the rule wants {rule.describe()} (training rate "
                "+ null_rate_tolerance)"
            )
        shown = self.example if rule.kind == "user" else f"{rule.column} = {self.example}"
        example = f", e.g. {shown}" if self.example is not None else ""
        return (
            f"Validation rule '{rule.name}'{owner} ({rule.action}): {self.rows:,} row(s) break "
            f"{rule.describe()}{example}"
        )


@dataclass(frozen=True)
class ValidationReport:
    selected: int
    outcomes: tuple[RuleOutcome, ...]

    def plus(self, other: ValidationReport) -> ValidationReport:
        """Outcomes of two passes over different rules (selected: the larger count)."""
        return ValidationReport(max(self.selected, other.selected), self.outcomes + other.outcomes)

    def violated(self, action: str) -> list[RuleOutcome]:
        return [o for o in self.outcomes if o.violated and o.rule.action == action]

    def counts(self) -> dict[str, int]:
        """Rule name -> rows violating it (null_rate rules: null rows), every rule listed."""
        return {
            o.rule.name: o.rows if o.rule.kind != "null_rate" else int(o.violated)
            for o in self.outcomes
        }


def rewrite_sql(expr: str, tables: Sequence[str]) -> str:
    """`users.age` -> `users__age` (the joined frame's name) for the spec's tables."""
    known = set(tables)

    def swap(match: re.Match[str]) -> str:
        table, column = match.group(1), match.group(2)
        return f"`{qualified(table, column)}`" if table in known else match.group(0)

    return _QUALIFIED.sub(swap, expr)


def violation(rule: Rule, tables: Sequence[str]) -> Column:
    """True where the row breaks `rule`; never null."""
    if rule.kind == "user":
        return F.coalesce(~F.expr(rewrite_sql(rule.expr, tables)), F.lit(True))
    value = _value(rule)
    if rule.kind == "range":
        broken = (value < F.lit(rule.low)) | (value > F.lit(rule.high))
    elif rule.kind == "domain":
        broken = ~value.isin([float(v) for v in rule.domain])
    elif rule.kind == "nan":
        broken = F.isnan(value) | value.isin([float("inf"), float("-inf")])
    else:
        raise ValueError(f"not a row rule: {rule.kind}")
    return F.coalesce(broken & ~F.isnan(value) if rule.kind != "nan" else broken, F.lit(False))


def _value(rule: Rule) -> Column:
    feature = rule.feature
    assert feature is not None
    column = F.col(f"`{feature.ref}`")
    if feature.position is not None:
        column = F.element_at(column, feature.position + 1)
    return column.cast("double")


def example_value(rule: Rule, tables: Sequence[str]) -> Column:
    """What to show of a violating row: the feature's value, or the user rule's inputs."""
    if rule.kind == "user":
        refs = sorted({m.group(0) for m in _QUALIFIED.finditer(rule.expr) if m.group(1) in tables})
        if not refs:
            return F.lit(None).cast("string")
        return F.concat_ws(
            ", ",
            *(
                F.concat(
                    F.lit(f"{r}="),
                    F.coalesce(F.expr(rewrite_sql(r, tables)).cast("string"), F.lit("null")),
                )
                for r in refs
            ),
        )
    return F.coalesce(_value(rule).cast("string"), F.lit("null"))


def any_of(conditions: Sequence[Column]) -> Column | None:
    out: Column | None = None
    for condition in conditions:
        out = condition if out is None else out | condition
    return out


def quarantine_condition(rules: Sequence[Rule], tables: Sequence[str]) -> Column | None:
    return any_of([violation(r, tables) for r in rules if r.action == "quarantine"])


def reason(rules: Sequence[Rule], tables: Sequence[str]) -> Column:
    """The quarantine table's `reason`: every quarantine rule the row breaks, with the value."""
    parts = [
        F.when(
            violation(r, tables),
            F.concat(
                F.lit(f"{r.name}: "),
                F.lit(f"{r.column} = " if r.kind != "user" else ""),
                example_value(r, tables),
            ),
        )
        for r in rules
        if r.action == "quarantine"
    ]
    return F.concat_ws("; ", *parts) if parts else F.lit(None).cast("string")


def check_rows(joined: DataFrame, rules: Sequence[Rule], tables: Sequence[str]) -> ValidationReport:
    """One pass over the rule columns: rows per rule, an example, null shares.

    Profile rules are checked with numpy on the Arrow batches (hundreds of Spark aggregate
    expressions would take Spark longer to plan than to run); a user rule's SQL is evaluated by
    Spark into a boolean column and an example column that the pass counts."""
    refs = dict.fromkeys(r.feature.ref for r in rules if r.feature is not None)
    columns = [F.lit(1).alias(_ROW), *(F.col(f"`{ref}`") for ref in refs)]
    frame = joined.select(*columns, *user_rule_columns(rules, tables))
    try:
        bodies = [
            json.loads(row[0])
            for row in frame.mapInArrow(RowCheck(tuple(rules)), "body string").collect()
        ]
    except PySparkException as exc:
        raise _rule_error(rules, exc) from None
    return merge_reports(rules, bodies)


def user_rule_columns(rules: Sequence[Rule], tables: Sequence[str]) -> list[Column]:
    """Per user rule of `rules` (by its index there), the columns a `RuleTally` counts."""
    columns = []
    for i, rule in enumerate(rules):
        if rule.kind == "user":
            broken = violation(rule, tables)
            columns.append(broken.alias(f"{_USER}{i}"))
            columns.append(F.when(broken, example_value(rule, tables)).alias(f"{_USER}{i}_e"))
    return columns


_ROW = "__batchscore_row"
_COLUMNWISE = ("range", "nan", "null_rate")
_USER = "__batchscore_rule_"


@dataclass
class RuleTally:
    """One task's violation counts, an example per rule, and the rows seen."""

    rules: tuple[Rule, ...]
    selected: int = 0
    counts: list[int] = field(default_factory=list)
    examples: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.rules)
        self.examples = [None] * len(self.rules)

    def add(self, stack: InputStack) -> None:
        self.selected += stack.batch.num_rows
        for i, rule in enumerate(self.rules):
            if rule.kind in _COLUMNWISE:
                self._input_rule(stack, i, rule)
                continue
            broken, shown = _broken(stack, i, rule)
            self._count(i, broken, shown)

    def _input_rule(self, stack: InputStack, i: int, rule: Rule) -> None:
        """Range, NaN and null-rate rules: answered from what the batch's input already
        knows (null count, bounds, cleanliness: physical.input_stack) and only compared row
        by row when that shows a violation, so hundreds of rules cost a few calls each."""
        assert rule.feature is not None
        column = stack.column(rule.feature)
        if rule.kind == "null_rate":
            self.counts[i] += column.null_count
            if column.null_count and self.examples[i] is None:
                self.examples[i] = "null"
            return
        if rule.kind == "nan":
            if column.clean():
                return
            x = column.values
            broken = (np.isnan(x) & ~column.null()) | np.isinf(x)
        else:  # range
            low, high = column.bounds()
            assert rule.low is not None and rule.high is not None
            if not (low < rule.low or high > rule.high):  # NaN bounds: no value to compare
                return
            x = column.values
            with np.errstate(invalid="ignore"):
                broken = (x < rule.low) | (x > rule.high)
        self._count(i, broken, lambda r: repr(float(x[r])))

    def _count(self, i: int, broken: np.ndarray, shown: Callable[[int], str | None]) -> None:
        n = int(np.count_nonzero(broken))
        self.counts[i] += n
        if n and self.examples[i] is None:
            self.examples[i] = shown(int(np.argmax(broken)))

    def body(self) -> dict[str, Any]:
        return {"selected": self.selected, "counts": self.counts, "examples": self.examples}


@dataclass(frozen=True)
class RowCheck:
    """Counts each rule's violations over a task's batches; yields one JSON row."""

    rules: tuple[Rule, ...]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        tally = RuleTally(self.rules)
        for batch in batches:
            tally.add(InputStack(batch))
        yield pa.RecordBatch.from_pydict({"body": [json.dumps(tally.body())]})


@dataclass(frozen=True)
class InPassChecks:
    """Rules the scoring task counts on the rows it scores (warn rules: no pass of their own);
    each task leaves its tally as a file in `folder` (physical.task_files)."""

    rules: tuple[Rule, ...]
    folder: str

    def start(self) -> RuleTally:
        return RuleTally(self.rules)

    def dump(self, tally: RuleTally) -> None:
        write_task_file(self.folder, task_name(), tally.body())

    def collect(self) -> ValidationReport:
        bodies = read_task_files(self.folder)
        remove_task_files(self.folder)
        return merge_reports(self.rules, bodies)

    def discard(self) -> None:
        remove_task_files(self.folder)


def _broken(
    stack: InputStack, i: int, rule: Rule
) -> tuple[np.ndarray, Callable[[int], str | None]]:
    """Rows breaking a user or domain rule (range, NaN and null-rate rules go column-wise,
    `RuleTally._columnwise`), and how to show row r's value."""
    batch = stack.batch
    if rule.kind == "user":
        flags = batch.column(batch.schema.get_field_index(f"{_USER}{i}"))
        broken = np.asarray(pc.fill_null(flags, False).to_numpy(zero_copy_only=False), dtype=bool)
        example = batch.column(batch.schema.get_field_index(f"{_USER}{i}_e"))
        return broken, lambda r: example[r].as_py()
    feature = rule.feature
    assert feature is not None and rule.kind == "domain"
    column = stack.column(feature)
    values = column.values
    broken = ~np.isin(values, rule.domain) & ~np.isnan(values)
    return broken, lambda r: "null" if column.null()[r] else repr(float(values[r]))


def merge_reports(rules: Sequence[Rule], bodies: Sequence[dict[str, Any]]) -> ValidationReport:
    """The tasks' tallies added up."""
    selected = sum(int(b["selected"]) for b in bodies)
    outcomes = []
    for i, rule in enumerate(rules):
        count = sum(int(b["counts"][i]) for b in bodies)
        example = next((b["examples"][i] for b in bodies if b["examples"][i] is not None), None)
        if rule.kind == "null_rate":
            outcomes.append(RuleOutcome(rule, selected, rate=count / selected if selected else 0.0))
        else:
            outcomes.append(RuleOutcome(rule, count, example=example))
    return ValidationReport(selected, tuple(outcomes))


def _rule_error(rules: Sequence[Rule], exc: Exception) -> SpecError:
    user = [r.name for r in rules if r.kind == "user"]
    return SpecError(
        f"Validation rules {user} cannot be evaluated over the joined rows: "
        f"{first_line(exc)[:300]}. Write columns as table.column (a table of the spec) and "
        "use Spark SQL functions only."
    )


def refuse_failures(report: ValidationReport) -> None:
    """A `fail` rule with violations: DataError (exit 2) before any commit."""
    failed = report.violated("fail")
    if failed:
        more = f" ({len(failed) - 1} more fail rule(s) broken)" if len(failed) > 1 else ""
        raise DataError(
            f"{failed[0].message()}{more}; nothing committed. Fix the input data, or change the "
            "rule's action (validation.actions / the rule's action) to warn or quarantine."
        )


def check_types(plan: LogicalPlan, rules: Sequence[Rule]) -> ValidationReport:
    """Type rules, from the tables' schemas before any Spark job: a broken `fail` one raises
    DataError (exit 2); the others are reported with the run."""
    changed = dict(type_changes(plan, rules))
    outcomes = tuple(
        RuleOutcome(r, int(r in changed), example=changed.get(r)) for r in rules if r.kind == "type"
    )
    report = ValidationReport(0, outcomes)
    refuse_failures(report)
    return report
