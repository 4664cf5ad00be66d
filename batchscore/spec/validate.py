"""Cross-references inside a spec that pydantic cannot see: tables named by joins and models."""

from __future__ import annotations

from collections.abc import Callable

from batchscore.errors import SpecError, did_you_mean
from batchscore.monitor.drift import check_thresholds
from batchscore.spec.model import (
    JobSpec,
    JoinSpec,
    ModelMonitoringSpec,
    ProfileRuleKind,
    ValidationSpec,
)

ErrorAt = Callable[[tuple[str | int, ...], str], SpecError]


def check_references(spec: JobSpec, error: ErrorAt) -> None:
    tables = list(spec.tables)
    if spec.source.table not in spec.tables:
        raise error(
            ("source", "table"),
            f"source table '{spec.source.table}' is not declared under 'tables'."
            f"{did_you_mean(spec.source.table, tables)}",
        )
    seen: set[str] = {spec.source.table}

    def walk(joins: list[JoinSpec], path: tuple[str | int, ...]) -> None:
        for i, join in enumerate(joins):
            where = (*path, i, "table")
            if join.table not in spec.tables:
                raise error(
                    where,
                    f"joined table '{join.table}' is not declared under 'tables'."
                    f"{did_you_mean(join.table, tables)}",
                )
            if join.table in seen:
                raise error(where, f"table '{join.table}' is joined twice; join each table once.")
            seen.add(join.table)
            if join.on_missing == "quarantine" and spec.output.quarantine is None:
                raise error(
                    (*path, i, "on_missing"),
                    f"join '{join.table}' quarantines rows without a match, but output has no "
                    "'quarantine' table; add output.quarantine: PATH (a Delta table).",
                )
            walk(join.joins, (*path, i, "joins"))

    walk(spec.source.joins, ("source", "joins"))
    names: set[str] = set()
    for i, model in enumerate(spec.models):
        if model.name in names:
            raise error(("models", i, "name"), f"model name '{model.name}' is used twice.")
        names.add(model.name)
    if not spec.models:
        raise error(("models",), "the spec lists no models; add at least one.")
    _check_roles(spec, error)
    _check_health(spec, error)
    for col in spec.output.partition_by:
        if col not in spec.source.id_columns:
            raise error(
                ("output", "partition_by"),
                f"output partition column '{col}' is not among source.id_columns "
                f"{spec.source.id_columns}; add it there so it is carried into the output.",
            )


def _check_health(spec: JobSpec, error: ErrorAt) -> None:
    """Validation actions the output can carry out, and drift thresholds that exist and make
    sense (monitor.drift), each with the spec line that set them."""
    sections: list[tuple[tuple[str | int, ...], ValidationSpec]] = []
    if spec.validation is not None:
        sections.append((("validation",), spec.validation))
    sections += [
        (("models", i, "validation"), m.validation)
        for i, m in enumerate(spec.models)
        if m.validation is not None
    ]
    for path, section in sections:
        _check_validation(spec, section, path, error)
    thresholds: list[tuple[tuple[str | int, ...], ModelMonitoringSpec]] = []
    if spec.monitoring is not None:
        thresholds.append((("monitoring",), spec.monitoring))
    thresholds += [
        (("models", i, "monitoring"), m.monitoring)
        for i, m in enumerate(spec.models)
        if m.monitoring is not None
    ]
    for path, monitoring in thresholds:
        _check_thresholds(monitoring, path, error)


def _check_validation(
    spec: JobSpec, section: ValidationSpec, path: tuple[str | int, ...], error: ErrorAt
) -> None:
    whole_run: tuple[tuple[ProfileRuleKind, str], ...] = (
        ("null_rate", "a null rate"),
        ("type", "a column's type"),
    )
    for kind, what in whole_run:
        if section.actions.get(kind) == "quarantine":
            raise error(
                (*path, "actions", kind),
                f"{what} belongs to the whole run, not to a row, so it cannot quarantine; "
                "use warn or fail.",
            )
    actions = [section.on_violation, *section.actions.values()]
    actions += [r.action for r in section.rules if r.action is not None]
    if "quarantine" in actions and spec.output.quarantine is None:
        raise error(
            path,
            "a validation rule quarantines rows, but output has no 'quarantine' table; add "
            "output.quarantine: PATH (a Delta table).",
        )
    names: set[str] = set()
    for i, rule in enumerate(section.rules):
        if rule.name in names:
            raise error((*path, "rules", i, "name"), f"rule name '{rule.name}' is used twice.")
        names.add(rule.name)
        if not rule.expr.strip():
            raise error((*path, "rules", i, "expr"), f"rule '{rule.name}' has an empty expr.")


def _check_thresholds(
    monitoring: ModelMonitoringSpec, path: tuple[str | int, ...], error: ErrorAt
) -> None:
    try:
        check_thresholds(monitoring.thresholds, where="thresholds")
    except SpecError as exc:
        raise error((*path, "thresholds"), str(exc)) from None
    for label, mapping in monitoring.features.items():
        try:
            check_thresholds(mapping, where=f"features.{label}")
        except SpecError as exc:
            raise error((*path, "features", label), str(exc)) from None


def _check_roles(spec: JobSpec, error: ErrorAt) -> None:
    """Challengers name a champion of the spec; a canary has a share; canaries of one champion
    serve at most every row."""
    names = [m.name for m in spec.models]
    roles = {m.name: m.role for m in spec.models}
    served: dict[str, float] = {}
    for i, model in enumerate(spec.models):
        if model.shadow_of is not None and model.canary_of is not None:
            raise error(
                ("models", i), f"model '{model.name}' is both shadow_of and canary_of; pick one."
            )
        if model.role == "champion":
            if model.share is not None:
                raise error(
                    ("models", i, "share"),
                    f"model '{model.name}' has a share but no canary_of; share goes with "
                    "canary_of: NAME.",
                )
            continue
        key = "shadow_of" if model.role == "shadow" else "canary_of"
        champion = model.champion
        if champion not in names:
            raise error(
                ("models", i, key),
                f"model '{model.name}' is a {model.role} of '{champion}', which is not a model "
                f"of the spec.{did_you_mean(champion, names)}",
            )
        if champion == model.name or roles[champion] != "champion":
            raise error(
                ("models", i, key),
                f"model '{model.name}' is a {model.role} of '{champion}', which is not a "
                "champion; a challenger names the model that serves (no chains).",
            )
        if model.role == "canary":
            if not spec.source.id_columns:
                raise error(
                    ("models", i, "canary_of"),
                    f"canary '{model.name}' picks its rows by a hash of the id columns, but "
                    "source.id_columns is empty; list the columns that identify a row.",
                )
            if model.share is None:
                raise error(
                    ("models", i),
                    f"canary '{model.name}' needs a share: the fraction of rows it serves, in "
                    "(0, 1], e.g. share: 0.05.",
                )
            served[champion] = served.get(champion, 0.0) + model.share
            if served[champion] > 1.0 + 1e-12:
                raise error(
                    ("models", i, "share"),
                    f"the canaries of '{champion}' serve {served[champion]:.0%} of its rows, "
                    "over 100%; lower their shares.",
                )
        elif model.share is not None:
            raise error(
                ("models", i, "share"),
                f"shadow '{model.name}' serves no rows, so it takes no share; remove it.",
            )
