"""Logical plan nodes. Frozen dataclasses: rules return new plans, never mutate old ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from batchscore.plan.catalog import ColumnKind, PartitionFilter, TableInfo
from batchscore.spec.model import JobSpec, OutputSpec

if TYPE_CHECKING:
    from batchscore.kernels.batched import AffineGroup
    from batchscore.kernels.trees.factorized import TablePartial
    from batchscore.kernels.trees.merged import TreeGroup
    from batchscore.models.compiled import CompiledModel


def qualified(table: str, column: str) -> str:
    """The column's name once tables are joined: unique because table names are."""
    return f"{table}__{column}"


def present_flag(table: str) -> str:
    """The column a join with `on_missing: quarantine` adds: true where the row was found."""
    return f"__present__{table}"


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
    on_missing: str = "null"


@dataclass(frozen=True, eq=False)
class PartialModel:
    """One affine model's share of the decision that a dimension row contributes.

    `inputs` are this dimension's features followed by partial columns of its own factorized
    dimensions (snowflake); `weights` has one row per input value and `width` columns (the
    model's decision columns), identity rows for the child partials.
    """

    model: str
    inputs: tuple[FeatureRef, ...]
    weights: np.ndarray
    output: FeatureRef

    @property
    def width(self) -> int:
        return int(self.weights.shape[1])


@dataclass(frozen=True, eq=False)
class TreePartialModel:
    """One tree ensemble's share of a dimension (kernels.trees.factorized.TablePartial).

    `outputs`: the words of the trees split across tables, then the summed leaf values of the
    trees that read this dimension alone (either may be absent).
    """

    model: str
    inputs: tuple[FeatureRef, ...]
    partial: TablePartial
    outputs: tuple[FeatureRef, ...]

    @property
    def width(self) -> int:
        return sum(f.width for f in self.outputs)


@dataclass(frozen=True)
class Partial:
    """Dimension-side partial scores: per row of `child`, one small array per affine model.

    The join then carries `width` floats per model instead of the dimension's features: decision
    values for affine models, leaf words and collapsed leaf sums for tree ensembles.
    """

    child: Node
    table: str
    models: tuple[PartialModel | TreePartialModel, ...]


Node = Scan | Join | Partial


def subtree_tables(node: Node) -> set[str]:
    """Every table a subtree reads."""
    if isinstance(node, Scan):
        return {node.table}
    if isinstance(node, Partial):
        return subtree_tables(node.child)
    return subtree_tables(node.left) | subtree_tables(node.right)


def children(node: Node) -> list[Node]:
    if isinstance(node, Scan):
        return []
    if isinstance(node, Partial):
        return [node.child]
    return [node.left, node.right]


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
class ModelGroup:
    """Models scored from one union matrix (kernels.batched.AffineGroup: one product;
    kernels.trees.merged.TreeGroup: one leaf search)."""

    names: tuple[str, ...]
    inputs: tuple[FeatureRef, ...]
    group: AffineGroup | TreeGroup


@dataclass(frozen=True)
class LogicalPlan:
    spec: JobSpec
    tables: dict[str, TableInfo]
    source: Node
    models: tuple[ModelBinding, ...]
    id_columns: tuple[IdColumn, ...]
    output: OutputSpec
    decisions: tuple[Decision, ...] = field(default_factory=tuple)
    groups: tuple[ModelGroup, ...] = ()

    def nodes(self) -> list[Node]:
        """Every node, parents before children, left before right."""
        out: list[Node] = []
        stack: list[Node] = [self.source]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(children(node)))
        return out

    def scans(self) -> list[Scan]:
        return [n for n in self.nodes() if isinstance(n, Scan)]

    def joins(self) -> list[Join]:
        return [n for n in self.nodes() if isinstance(n, Join)]

    def partials(self) -> list[Partial]:
        return [n for n in self.nodes() if isinstance(n, Partial)]

    def features(self) -> list[FeatureRef]:
        seen: dict[str, FeatureRef] = {}
        for binding in self.models:
            for feature in binding.features:
                seen.setdefault(feature.ref, feature)
        return list(seen.values())
