"""Validation rules of a run: derived from each model's training profile, plus the user's.

A rule says what a selected row (or, for `null_rate`, the whole selection) must satisfy and what
happens when it does not (`warn`, `quarantine`, `fail`). This module only decides which rules
exist; `physical.validation` turns them into Spark expressions over the joined rows, so the
rules are evaluated where the data is and the planner's layers stay free of Spark.

Profile-derived rules, per model input (a scalar feature, or a position `name[i]` of an array
feature; Spark ML vectors and sparse vectors are monitored but not validated row by row):

- `range`: the value lies within the training [min, max], widened by `tolerance` x (max - min);
- `domain`: an integer-coded category the training data never had (integer and boolean
  features with at most 32 distinct training values);
- `nan`: NaN or infinity, where the training data had none;
- `null_rate`: the run's share of nulls exceeds the training share by more than
  `null_rate_tolerance` (a property of the run, so its action is warn or fail);
- `type`: the column's type family (integer, floating, boolean, string, decimal) differs from
  the training data's (checked from the tables' schemas before Spark starts; warn or fail).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from batchscore.monitor.profile import FeatureProfile, Profile
from batchscore.spec.model import Action, ValidationSpec

RuleKind = Literal["range", "domain", "nan", "null_rate", "type", "user"]
ROW_KINDS: tuple[RuleKind, ...] = ("range", "domain", "nan", "user")


@dataclass(frozen=True)
class FeatureInput:
    """One model input as the scoring pass reads it: the joined column, its label, and the
    position in an array feature (None for a scalar)."""

    ref: str
    label: str
    position: int | None = None
    kind: str = "scalar"
    """scalar | array | vector (a dense position) | sparse (a wide vector as a whole)."""
    width: int = 1

    @property
    def name(self) -> str:
        return self.label if self.position is None else f"{self.label}[{self.position}]"


@dataclass(frozen=True)
class Rule:
    name: str
    kind: RuleKind
    action: Action
    model: str | None = None
    feature: FeatureInput | None = None
    low: float | None = None
    high: float | None = None
    domain: tuple[float, ...] = ()
    expr: str = ""
    limit: float | None = None
    """null_rate: the highest null share the run may have."""
    dtype: str = ""
    """type: the training column's type family (integer, floating, boolean, string, ...)."""

    @property
    def column(self) -> str:
        """What the rule looks at, as the user wrote it: a feature label, or the expression."""
        return self.feature.name if self.feature is not None else self.expr

    def describe(self) -> str:
        """The rule's condition in words, for messages and the quarantine reason."""
        where = self.column
        if self.kind == "range":
            return f"{where} within the training range [{self.low:.6g}, {self.high:.6g}]"
        if self.kind == "domain":
            shown = ", ".join(f"{v:g}" for v in self.domain[:10])
            more = ", ..." if len(self.domain) > 10 else ""
            return f"{where} among the training values {{{shown}{more}}}"
        if self.kind == "nan":
            return f"{where} not NaN or infinite (the training data had none)"
        if self.kind == "null_rate":
            return f"null rate of {where} at most {self.limit:.2%}"
        if self.kind == "type":
            return f"{where} of the training type family '{self.dtype}'"
        return self.expr


def profile_rules(
    model: str,
    inputs: Sequence[FeatureInput],
    profile: Profile,
    section: ValidationSpec,
) -> list[Rule]:
    """The rules `profile` implies for the model's `inputs` under `section`."""
    if not section.profile_rules:
        return []
    rules: list[Rule] = []
    for feature in inputs:
        found = profile.lookup(feature.name)
        if found is None:
            continue  # monitor.health refuses a profile that lacks a model input
        rules += _feature_rules(model, feature, found, section)
    return rules


def type_family(dtype: str) -> str:
    """integer | floating | boolean | string | decimal | other: what a type change means."""
    text = dtype.lower()
    if text.startswith(("int", "uint", "long", "short", "byte")):
        return "integer"
    if text.startswith(("double", "float", "halffloat")):
        return "floating"
    if text in ("bool", "boolean"):
        return "boolean"
    if text.startswith(("string", "large_string", "utf8", "dictionary")):
        return "string"
    return "decimal" if text.startswith("decimal") else "other"


def _feature_rules(
    model: str, feature: FeatureInput, profile: FeatureProfile, section: ValidationSpec
) -> list[Rule]:
    def action(kind: Literal["range", "domain", "nan", "null_rate", "type"]) -> Action:
        chosen = section.actions.get(kind, section.on_violation)
        whole_run = kind in ("null_rate", "type")
        return "warn" if whole_run and chosen == "quarantine" else chosen

    def rule(
        kind: Literal["range", "domain", "nan", "null_rate", "type"], **fields: object
    ) -> Rule:
        return Rule(
            name=f"{kind} {feature.name}",
            kind=kind,
            action=action(kind),
            model=model,
            feature=feature,
            **fields,  # type: ignore[arg-type]
        )

    rules: list[Rule] = [rule("type", dtype=type_family(profile.dtype))]
    if profile.kind == "numeric" and profile.count and profile.min is not None:
        assert profile.max is not None
        slack = section.tolerance * (profile.max - profile.min)
        rules.append(rule("range", low=profile.min - slack, high=profile.max + slack))
        if profile.categories and not profile.other and _integer(profile.dtype):
            domain = tuple(sorted(float(v) for v in profile.categories))
            rules.append(rule("domain", domain=domain))
        if profile.nan == 0 and profile.inf == 0:
            rules.append(rule("nan"))
    if profile.rows:
        limit = min(1.0, profile.nulls / profile.rows + section.null_rate_tolerance)
        if limit < 1.0:
            rules.append(rule("null_rate", limit=limit))
    return rules


def _integer(dtype: str) -> bool:
    return dtype.startswith(("int", "uint")) or dtype in ("bool", "boolean")


def user_rules(section: ValidationSpec) -> list[Rule]:
    return [
        Rule(name=r.name, kind="user", action=r.action or section.on_violation, expr=r.expr)
        for r in section.rules
    ]


def distinct_rules(rules: Sequence[Rule]) -> list[Rule]:
    """One rule per name: models that share a feature and a profile share its rules; two
    models whose profiles disagree keep both, named by model."""
    by_name: dict[str, list[Rule]] = {}
    for rule in rules:
        by_name.setdefault(rule.name, []).append(rule)
    out: list[Rule] = []
    for name, same in by_name.items():
        first = same[0]
        if all(_same_condition(first, other) for other in same[1:]):
            models = sorted({r.model for r in same if r.model})
            out.append(replace(first, model=", ".join(models) if models else None))
        else:
            out += [replace(r, name=f"{name} ({r.model})") for r in same]
    return out


def _same_condition(a: Rule, b: Rule) -> bool:
    return (a.kind, a.action, a.low, a.high, a.domain, a.expr, a.limit, a.dtype) == (
        b.kind,
        b.action,
        b.low,
        b.high,
        b.domain,
        b.expr,
        b.limit,
        b.dtype,
    )
