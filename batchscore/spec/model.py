"""The job spec as typed, validated objects (docs/contract.md, "The job spec (YAML)").

pydantic gives types and defaults; the friendlier checks (unknown keys with suggestions, line
numbers, cross-references between sections) live in `load.py` and `validate.py`, because users
read those messages at 3 a.m. in a scheduler log.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Format = Literal["delta", "parquet"]
OutputKind = Literal["predict", "predict_proba"]
Action = Literal["warn", "quarantine", "fail"]
ProfileRuleKind = Literal["range", "domain", "nan", "null_rate", "type"]
STORAGE_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
"""A `storage:` value: exactly one `${VARIABLE}` reference."""
STORAGE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def storage_problem(key: object, value: object) -> str | None:
    """Why `key: value` is not a valid `storage:` entry (None when it is). Never quotes the
    value: it may be a secret pasted into the spec. No final period: callers end the sentence."""
    if not isinstance(key, str) or not STORAGE_KEY.match(key):
        return (
            f"storage key {str(key)[:60]!r} is not an option name; use delta-rs' names, e.g. "
            "AWS_ENDPOINT_URL, AWS_REGION, AZURE_STORAGE_ACCOUNT_NAME"
        )
    if isinstance(value, str) and STORAGE_REFERENCE.match(value.strip()):
        return None
    suggested = re.sub(r"[^A-Za-z0-9_]", "_", key).upper()
    return (
        f"storage.{key} holds a literal value; storage values must be ${{ENV_VAR}} references, "
        "because a spec is shared and committed and must never hold a secret. Write "
        f"`{key}: ${{{suggested}}}` and set that variable in the job's environment"
    )


def referenced_variable(value: str) -> str:
    """The variable a `${NAME}` storage value names (storage_problem accepted it)."""
    match = STORAGE_REFERENCE.match(value.strip())
    if match is None:
        raise ValueError("not a ${VARIABLE} reference")
    return match.group(1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableSpec(_Strict):
    path: str
    format: Format = "delta"
    partition_by: list[str] = Field(default_factory=list)
    key: str | list[str] | None = None

    @property
    def keys(self) -> list[str]:
        if self.key is None:
            return []
        return [self.key] if isinstance(self.key, str) else list(self.key)


class JoinSpec(_Strict):
    table: str
    on: dict[str, str]
    joins: list[JoinSpec] = Field(default_factory=list)
    on_missing: Literal["null", "quarantine"] = "null"
    """A fact row whose key finds no row here (or is null): `null` scores it with null features,
    as the materialized left join would; `quarantine` writes its ids to `output.quarantine`
    instead of scoring it."""

    @field_validator("on")
    @classmethod
    def _on_not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("'on' needs at least one pair {fact_column: dimension_column}")
        return value


class SourceSpec(_Strict):
    table: str
    where: str | None = None
    joins: list[JoinSpec] = Field(default_factory=list)
    id_columns: list[str] = Field(default_factory=list)


class RuleSpec(_Strict):
    """A user rule: a Spark SQL boolean over the joined row (`users.age >= 18`); a row violates
    it when the expression is false or null."""

    name: str
    expr: str
    action: Action | None = None
    """Default: the section's `on_violation`."""


class ValidationSpec(_Strict):
    """Rules checked on every selected row before scoring (monitor.rules)."""

    on_violation: Action = "warn"
    """The action of every rule that does not name its own."""
    profile_rules: bool = True
    """Derive rules from the model's training profile: range, domain, NaN/inf, null rate."""
    actions: dict[ProfileRuleKind, Action] = Field(default_factory=dict)
    """Per kind of profile rule, an action other than `on_violation` (null_rate and type: warn
    | fail)."""
    tolerance: float = Field(default=0.1, ge=0.0)
    """Range rules accept values up to this fraction of the training range beyond min/max."""
    null_rate_tolerance: float = Field(default=0.05, ge=0.0, le=1.0)
    """A feature's null rate may exceed its training null rate by this much (absolute)."""
    rules: list[RuleSpec] = Field(default_factory=list)


class ModelMonitoringSpec(_Strict):
    """Per-model drift thresholds (metric -> value), overall and per feature label."""

    thresholds: dict[str, float] = Field(default_factory=dict)
    features: dict[str, dict[str, float]] = Field(default_factory=dict)


class MonitoringSpec(ModelMonitoringSpec):
    """Per-run statistics and drift of every model's inputs and predictions, appended to a
    Delta table (monitor.metrics)."""

    table: str
    on_alert: Literal["warn", "fail"] = "warn"
    """fail: a run whose drift passes a threshold commits, then exits 3."""


class ModelSpec(_Strict):
    name: str
    path: str
    sha256: str | None = None
    features: list[str]
    output: OutputKind | None = None
    version: str | None = None
    strategy: str | None = None
    profile: str | None = None
    """A training profile folder (`batchscore profile ...`); registry models default to theirs."""
    validation: ValidationSpec | None = None
    """Replaces the job's validation section for this model."""
    monitoring: ModelMonitoringSpec | None = None
    """Thresholds for this model on top of the job's."""
    shadow_of: str | None = None
    """A challenger scored on every row and stored, never served: NAME is its champion."""
    canary_of: str | None = None
    """A challenger that serves `share` of the rows (a stable hash of the ids picks them)."""
    share: float | None = Field(default=None, gt=0.0, le=1.0)

    @property
    def role(self) -> str:
        """champion | shadow | canary."""
        if self.shadow_of is not None:
            return "shadow"
        return "canary" if self.canary_of is not None else "champion"

    @property
    def champion(self) -> str:
        """The model whose rows this one serves or shadows (itself for a champion)."""
        return self.shadow_of or self.canary_of or self.name

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        if not value.replace("_", "a").isalnum():
            raise ValueError(
                f"model name '{value}' must use letters, digits and '_' only "
                "(it becomes a column prefix in the wide layout)"
            )
        return value

    @field_validator("features")
    @classmethod
    def _features_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a model needs at least one feature")
        return value


class OutputSpec(_Strict):
    path: str
    layout: Literal["long", "wide"] = "long"
    partition_by: list[str] = Field(default_factory=list)
    mode: Literal["append", "overwrite_partitions"] = "append"
    quarantine: str | None = None
    """Delta table for rows a join with `on_missing: quarantine` refused (ids, the join, run)."""
    evolve_schema: bool = False
    """Let a run add columns to the table (a model added to a wide-layout spec); off by default,
    so an accidental spec change cannot reshape a table other jobs read."""


class PlannerSpec(_Strict):
    factorize: Literal["auto", "always", "never"] = "auto"
    batch_models: bool = True


class JobSpec(_Strict):
    name: str
    tables: dict[str, TableSpec]
    source: SourceSpec
    models: list[ModelSpec]
    output: OutputSpec
    planner: PlannerSpec = Field(default_factory=PlannerSpec)
    validation: ValidationSpec | None = None
    monitoring: MonitoringSpec | None = None
    storage: dict[str, str] = Field(default_factory=dict)
    """Object-store options (delta-rs' names: AWS_ENDPOINT_URL, AZURE_STORAGE_ACCOUNT_NAME...),
    each a `${ENV_VAR}` reference resolved when the job runs (sinks/storage_config.py); a
    literal value is refused, so a spec never holds a secret."""
    # Where the spec came from (for messages and lineage); not a user key.
    spec_path: str | None = Field(default=None, exclude=True)
    spec_hash: str = Field(default="", exclude=True)
    run_date: str | None = Field(default=None, exclude=True)
    spec_text: str = Field(default="", exclude=True, repr=False)
    base_dir: str = Field(default="", exclude=True, repr=False)

    @property
    def pending_placeholder(self) -> bool:
        """True while `{run_date}` is unresolved: load without a date, run with one."""
        return "{run_date}" in (self.source.where or "") or any(
            "{run_date}" in t.path for t in self.tables.values()
        )

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_references(cls, value: Any) -> Any:
        """Refused before typing: pydantic's own error would quote a literal value."""
        if not isinstance(value, dict):
            raise ValueError("storage must be a mapping of option names to ${ENV_VAR} references")
        for key, reference in value.items():
            problem = storage_problem(key, reference)
            if problem is not None:
                raise ValueError(problem)
        return value

    def all_joins(self) -> list[JoinSpec]:
        """Every join, snowflake levels included, parents before children."""
        out: list[JoinSpec] = []
        stack = list(reversed(self.source.joins))
        while stack:
            join = stack.pop()
            out.append(join)
            stack.extend(reversed(join.joins))
        return out
