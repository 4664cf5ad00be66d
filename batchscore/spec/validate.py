"""Cross-references inside a spec that pydantic cannot see: tables named by joins and models."""

from __future__ import annotations

from collections.abc import Callable

from batchscore.errors import SpecError, did_you_mean
from batchscore.spec.model import JobSpec, JoinSpec

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
    for col in spec.output.partition_by:
        if col not in spec.source.id_columns:
            raise error(
                ("output", "partition_by"),
                f"output partition column '{col}' is not among source.id_columns "
                f"{spec.source.id_columns}; add it there so it is carried into the output.",
            )
