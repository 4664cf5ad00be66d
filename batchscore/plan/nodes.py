"""Logical plan nodes. Frozen dataclasses: rules return new plans, never mutate old ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchscore.plan.catalog import ColumnKind, PartitionFilter, TableInfo
from batchscore.spec.model import JobSpec, OutputSpec

if TYPE_CHECKING:
    from batchscore.models.compiled import CompiledModel


def qualified(table: str, column: str) -> str:
    """The column's name once tables are joined: unique because table names are."""
    return f"{table}__{column}"


@dataclass(frozen=True)
class Scan:
    table: str
    format: str
    path: str
    columns: tuple[str, ...] | None = None
    partition_filters: tuple[PartitionFilter, ...] = ()
    predicate: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class Join:
    """Left join of a dimension subtree onto its parent; `on` pairs (parent column, dim column)."""

    left: Node
    right: Node
    table: str
    parent: str
    on: tuple[tuple[str, str], ...]


Node = Scan | Join


@dataclass(frozen=True)
class FeatureRef:
    table: str
    column: str
    kind: ColumnKind
    width: int

    @property
    def ref(self) -> str:
        return qualified(self.table, self.column)

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(frozen=True)
class ModelBinding:
    model: CompiledModel
    features: tuple[FeatureRef, ...]

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def n_inputs(self) -> int:
        return sum(f.width for f in self.features)


@dataclass(frozen=True)
class IdColumn:
    table: str
    column: str
    output_name: str

    @property
    def ref(self) -> str:
        return qualified(self.table, self.column)


@dataclass(frozen=True)
class Decision:
    """One line of `explain`: which rule decided what, and the numbers behind it."""

    rule: str
    text: str


@dataclass(frozen=True)
class LogicalPlan:
    spec: JobSpec
    tables: dict[str, TableInfo]
    source: Node
    models: tuple[ModelBinding, ...]
    id_columns: tuple[IdColumn, ...]
    output: OutputSpec
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    def scans(self) -> list[Scan]:
        out: list[Scan] = []
        stack: list[Node] = [self.source]
        while stack:
            node = stack.pop()
            if isinstance(node, Scan):
                out.append(node)
            else:
                stack.extend([node.right, node.left])
        return out

    def joins(self) -> list[Join]:
        out: list[Join] = []
        stack: list[Node] = [self.source]
        while stack:
            node = stack.pop()
            if isinstance(node, Join):
                out.append(node)
                stack.extend([node.right, node.left])
        return out

    def features(self) -> list[FeatureRef]:
        seen: dict[str, FeatureRef] = {}
        for binding in self.models:
            for feature in binding.features:
                seen.setdefault(feature.ref, feature)
        return list(seen.values())
