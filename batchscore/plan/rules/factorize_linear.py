"""Push affine models through key-foreign-key joins (Morpheus-style factorized inference).

For an affine model, `x·W = x_fact·W_fact + Σ_t x_t·W_t`, and `x_t·W_t` depends only on the
dimension row. So each dimension row gets its partial decision values once (a `Partial` node on
the dimension side), the join carries k floats per model instead of the dimension's features,
and the fact side adds them with identity weights. Snowflakes recurse: a dimension's own
dimensions are folded into its partial first.

Whether a dimension is factorized is a cost decision (`plan.cost.JoinCost`), overridable with
`planner.factorize: always | never`; `explain` prints the numbers either way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from batchscore.kernels.affine import AffineKernel
from batchscore.plan.cost import (
    PASS_BYTES,
    JoinCost,
    fact_rows,
    moved_bytes,
    table_rows,
    value_bytes,
)
from batchscore.plan.nodes import (
    Decision,
    FeatureRef,
    Join,
    LogicalPlan,
    ModelBinding,
    Node,
    Partial,
    PartialModel,
    subtree_tables,
)
from batchscore.plan.rules._walk import root_table


@dataclass
class _Inputs:
    """An affine model's current inputs (features or partial columns) and their weight rows."""

    binding: ModelBinding
    kernel: AffineKernel
    inputs: list[FeatureRef]
    weights: list[np.ndarray]


def factorize_linear(plan: LogicalPlan) -> LogicalPlan:
    mode = plan.spec.planner.factorize
    affine = {b.name: _start(b) for b in plan.models if isinstance(b.model.kernel, AffineKernel)}
    if mode == "never" or not affine or not plan.joins():
        if mode == "never" and affine:
            note = Decision(
                "factorize_linear", "off (planner.factorize: never); every join materialized"
            )
            return replace(plan, decisions=(*plan.decisions, note))
        return plan
    state = _Rewrite(plan, affine, mode)
    source = state.node(plan.source)
    models = tuple(state.binding(b) for b in plan.models)
    return replace(
        plan, source=source, models=models, decisions=(*plan.decisions, *state.decisions)
    )


def _start(binding: ModelBinding) -> _Inputs:
    kernel = binding.model.kernel
    assert isinstance(kernel, AffineKernel)
    weights, offset = [], 0
    for feature in binding.features:
        weights.append(kernel.W[offset : offset + feature.width])
        offset += feature.width
    return _Inputs(binding, kernel, list(binding.features), weights)


class _Rewrite:
    def __init__(self, plan: LogicalPlan, affine: dict[str, _Inputs], mode: str) -> None:
        self.plan = plan
        self.affine = affine
        self.mode = mode
        self.decisions: list[Decision] = []
        self.fact_rows = fact_rows(plan)
        others = [b for b in plan.models if b.name not in affine]
        self.others = others
        self.shared = {f.ref for b in others for f in b.features} | {c.ref for c in plan.id_columns}

    def node(self, node: Node) -> Node:
        if isinstance(node, Join):
            return replace(node, left=self.node(node.left), right=self.dimension(node.right))
        return node

    def dimension(self, subtree: Node) -> Node:
        """Rewrite a dimension subtree bottom-up, then decide for its root table."""
        subtree = self.node(subtree)
        tables = subtree_tables(subtree)
        table = root_table(subtree)
        users = {m: s for m, s in self.affine.items() if any(f.table in tables for f in s.inputs)}
        if not users:
            return subtree
        cost = self._cost(table, tables, users)
        factorize = self.mode == "always" or (
            self.mode == "auto" and cost.factorize < cost.materialize
        )
        verdict = "factorize" if factorize else "materialize"
        why = f"planner.factorize: {self.mode}" if self.mode == "always" else "lower cost"
        self.decisions.append(
            Decision(
                "factorize_linear",
                f"{table}: {verdict} ({why}) for {', '.join(users)}; {cost.describe()}",
            )
        )
        if not factorize:
            return subtree
        return Partial(subtree, table, tuple(self._push(table, tables, s) for s in users.values()))

    def _push(self, table: str, tables: set[str], state: _Inputs) -> PartialModel:
        k = state.kernel.W.shape[1]
        taken = [i for i, f in enumerate(state.inputs) if f.table in tables]
        output = FeatureRef(table, f"partial__{state.binding.name}", "array", k)
        partial = PartialModel(
            state.binding.name,
            tuple(state.inputs[i] for i in taken),
            np.vstack([state.weights[i] for i in taken]),
            output,
        )
        keep = [i for i in range(len(state.inputs)) if i not in taken]
        state.inputs = [state.inputs[i] for i in keep] + [output]
        state.weights = [state.weights[i] for i in keep] + [np.eye(k)]
        return partial

    def _cost(self, table: str, tables: set[str], users: dict[str, _Inputs]) -> JoinCost:
        info = self.plan.tables[table]
        dim_rows = table_rows(info)
        moved: dict[str, float] = {}
        flops_m = flops_f = 0.0
        columns = fact_values = feature_values = 0
        for state in users.values():
            k = state.kernel.W.shape[1]
            columns += k
            for feature in state.inputs:
                values = feature.width
                if feature.table in tables:
                    feature_values += values
                    owner = self.plan.tables.get(feature.table, info)
                    stored = owner.nonzeros(feature.column) if feature.kind == "vector" else values
                    flops_m += 2.0 * stored * k * self.fact_rows
                    flops_f += 2.0 * stored * k * dim_rows
                    if feature.ref not in self.shared:
                        moved[feature.ref] = value_bytes(owner, feature)
                else:
                    fact_values += values
            flops_f += 2.0 * k * self.fact_rows
        dim_bytes = dim_rows * (sum(moved.values()) + 8.0 * columns) + PASS_BYTES
        return JoinCost(
            table=table,
            fact_rows=self.fact_rows,
            dim_rows=dim_rows,
            feature_values=feature_values,
            fact_values=fact_values,
            models=len(users),
            decision_columns=columns,
            materialize_bytes=self.fact_rows * moved_bytes(self.plan, table, sum(moved.values())),
            materialize_flops=flops_m,
            factorize_bytes=self.fact_rows * 8.0 * columns + dim_bytes,
            factorize_flops=flops_f,
            joined_anyway=tuple(
                b.name for b in self.others if any(f.table in tables for f in b.features)
            ),
        )

    def binding(self, binding: ModelBinding) -> ModelBinding:
        state = self.affine.get(binding.name)
        if state is None or state.inputs == list(binding.features):
            return binding
        kernel = state.kernel
        fact_side = AffineKernel(
            np.vstack(state.weights),
            kernel.b,
            kernel.link,
            kernel.classes,
            vector=kernel.vector,
            source=f"{kernel.source}, factorized" if kernel.source else "factorized",
        )
        return ModelBinding(replace(binding.model, kernel=fact_side), tuple(state.inputs))
