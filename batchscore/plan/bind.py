"""Spec -> logical plan: resolve every name against real schemas and load every model.

Everything a user can get wrong in a spec fails here, before Spark starts: unknown columns,
join keys, feature kinds, model input counts, sha256 pins.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from batchscore.errors import DataError, ModelError, SpecError, did_you_mean
from batchscore.models.compiled import CompiledModel, check_feature_count, compile_from_spec
from batchscore.plan.catalog import TableInfo, column_kind, describe_table
from batchscore.plan.nodes import FeatureRef, IdColumn, Join, LogicalPlan, ModelBinding, Node, Scan
from batchscore.plan.predicates import referenced_columns
from batchscore.sinks.storage_config import use_storage
from batchscore.spec.model import JobSpec, JoinSpec, ModelSpec, TableSpec

ModelLoader = Callable[[ModelSpec], CompiledModel]
TableDescriber = Callable[[str, TableSpec], TableInfo]
"""How a table's schema, partitions and files are learnt: from storage, or (tests of the rules)
from a synthetic catalog."""


def load_spec_model(model: ModelSpec) -> CompiledModel:
    """A spec's model loaded (pin-checked) and compiled, as the planner binds it."""
    return compile_from_spec(
        model.name,
        model.path,
        sha256=model.sha256,
        output=model.output,
        version=model.version,
        strategy=model.strategy,
    )


def bind(
    spec: JobSpec,
    *,
    load_model: ModelLoader = load_spec_model,
    describe: TableDescriber = describe_table,
) -> LogicalPlan:
    """The naive plan: scan everything, left-join every dimension, score every model.

    Binding activates the spec's `storage:` options first (resolved from the environment now),
    so its tables, models and every later step of the job reach object stores with them."""
    use_storage(spec.storage)
    used = [spec.source.table, *(j.table for j in spec.all_joins())]
    tables = {name: describe(name, spec.tables[name]) for name in used}
    source = _bind_source(spec, tables)
    id_columns = tuple(_bind_id(spec, tables, name) for name in spec.source.id_columns)
    models = tuple(_bind_model(spec, tables, m, load_model) for m in spec.models)
    return LogicalPlan(spec, tables, source, models, id_columns, spec.output)


def _scan(info: TableInfo, predicate: str | None = None) -> Scan:
    return Scan(info.name, info.spec.format, info.path, predicate=predicate, version=info.version)


def _bind_source(spec: JobSpec, tables: dict[str, TableInfo]) -> Node:
    fact = tables[spec.source.table]
    where = spec.source.where
    if where:
        missing = sorted(c for c in referenced_columns(where) if not fact.has_column(c))
        if missing:
            raise SpecError(
                f"source.where '{where}' uses column '{missing[0]}' that table "
                f"'{fact.name}' does not have.{did_you_mean(missing[0], fact.schema.names)}"
            )
    node: Node = _scan(fact, where or None)
    for join in spec.source.joins:
        node = Join(
            node,
            _bind_dimension(join, tables),
            join.table,
            fact.name,
            _keys(join, fact, tables),
            join.on_missing,
        )
    return node


def _bind_dimension(join: JoinSpec, tables: dict[str, TableInfo]) -> Node:
    """A dimension with its own dimensions joined first (snowflake), as one subtree."""
    info = tables[join.table]
    node: Node = _scan(info)
    for child in join.joins:
        node = Join(
            node,
            _bind_dimension(child, tables),
            child.table,
            info.name,
            _keys(child, info, tables),
            child.on_missing,
        )
    return node


def _keys(
    join: JoinSpec, parent: TableInfo, tables: dict[str, TableInfo]
) -> tuple[tuple[str, str], ...]:
    dim = tables[join.table]
    pairs = []
    for left, right in join.on.items():
        for info, column in ((parent, left), (dim, right)):
            if not info.has_column(column):
                raise SpecError(
                    f"Join of '{dim.name}' onto '{parent.name}': key column '{column}' is not in "
                    f"table '{info.name}'.{did_you_mean(column, info.schema.names)} "
                    f"Fix the 'on' mapping {{{left}: {right}}}."
                )
        left_type, right_type = parent.dtype(left), dim.dtype(right)
        if not _comparable(left_type, right_type):
            raise SpecError(
                f"Join of '{dim.name}' onto '{parent.name}': key types differ "
                f"({parent.name}.{left} is {left_type}, {dim.name}.{right} is {right_type}). "
                "Store both keys with the same type."
            )
        pairs.append((left, right))
    if dim.spec.keys and sorted(dim.spec.keys) != sorted(r for _, r in pairs):
        raise SpecError(
            f"Join of '{dim.name}': 'on' uses {[r for _, r in pairs]} but tables.{dim.name}.key "
            f"is {dim.spec.keys}. Join on the dimension's key."
        )
    return tuple(pairs)


def _comparable(left: pa.DataType, right: pa.DataType) -> bool:
    def family(t: pa.DataType) -> str:
        if pa.types.is_integer(t):
            return "int"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "str"
        return str(t)

    return family(left) == family(right)


def _tables_in_job(spec: JobSpec) -> list[str]:
    return [spec.source.table, *(j.table for j in spec.all_joins())]


def _resolve(
    spec: JobSpec, tables: dict[str, TableInfo], name: str, what: str
) -> tuple[TableInfo, str]:
    """`table.column` or a bare `column` that exactly one joined table has."""
    in_job = _tables_in_job(spec)
    if "." in name:
        table, column = name.split(".", 1)
        if table not in tables:
            raise SpecError(
                f"{what} '{name}' names table '{table}', which is not in the job's source or "
                f"joins.{did_you_mean(table, in_job)}"
            )
        info = tables[table]
        if not info.has_column(column):
            raise SpecError(
                f"{what} '{name}': table '{table}' has no column '{column}'."
                f"{did_you_mean(column, info.schema.names)}"
            )
        return info, column
    owners = [tables[t] for t in in_job if tables[t].has_column(name)]
    if len(owners) == 1:
        return owners[0], name
    if len(owners) > 1:
        # The fact table wins for id columns and fact-side features; dims must be qualified.
        if owners[0].name == spec.source.table:
            return owners[0], name
        options = ", ".join(f"'{o.name}.{name}'" for o in owners)
        raise SpecError(f"{what} '{name}' is ambiguous: it is in several tables. Write {options}.")
    every = [c for t in in_job for c in tables[t].schema.names] + [
        f"{t}.{c}" for t in in_job for c in tables[t].schema.names
    ]
    raise SpecError(
        f"Unknown {what.lower()} '{name}': no joined table has it.{did_you_mean(name, every)}"
    )


def _bind_id(spec: JobSpec, tables: dict[str, TableInfo], name: str) -> IdColumn:
    info, column = _resolve(spec, tables, name, "Id column")
    return IdColumn(info.name, column, column)


def _bind_model(
    spec: JobSpec, tables: dict[str, TableInfo], model: ModelSpec, load_model: ModelLoader
) -> ModelBinding:
    features = []
    for name in model.features:
        info, column = _resolve(spec, tables, name, f"Feature of model '{model.name}'")
        kind = column_kind(info.dtype(column))
        if kind is None:
            raise DataError(
                f"Feature '{name}' of model '{model.name}' is a {info.dtype(column)} column; "
                "models "
                "read numbers, arrays of numbers or Spark ML vectors. Encode it first or drop it."
            )
        features.append(FeatureRef(info.name, column, kind, info.width(column)))
    try:
        compiled = load_model(model)
    except ModelError:
        raise
    binding = ModelBinding(compiled, tuple(features))
    check_feature_count(compiled, binding.n_inputs, _describe_features(binding))
    return binding


def _describe_features(binding: ModelBinding) -> str:
    parts = [f.label if f.width == 1 else f"{f.label}[{f.width}]" for f in binding.features]
    return ", ".join(parts)
