"""Push tree ensembles through key-foreign-key joins (factorized QuickScorer).

For each dimension joined to the fact table and each tree ensemble that reads it, the dimension
side computes once per dimension row the AND of the masks of the nodes that read its features
(the whole dimension subtree: a snowflake's own dimensions are joined into it first, which costs
dimension rows only), and the summed leaf values of the trees that read nothing else; the fact
side finishes (kernels.trees.factorized). The join carries a few words per tree instead of the
dimension's features.

It pays when the dimension's features are wide and the trees few or shallow; a tree's words
(ceil(leaves / 32) floats) can outweigh narrow features. With a C compiler on the driver the
fact side is compiled like the materialized model (word tests in place of the dimension's
nodes); without one it is numpy, about fifty times slower per node than compiled code.
`plan.cost.JoinCost` weighs both; `planner.factorize` can force either way, and `explain`
prints the numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from batchscore.kernels.base import Kernel
from batchscore.kernels.trees.compiled.toolchain import find_compiler
from batchscore.kernels.trees.factorized import FACT, Factorization, factorize_ensemble
from batchscore.kernels.trees.ir import TreeEnsemble
from batchscore.plan.cost import (
    PASS_BYTES,
    TEST_FLOPS,
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
    TreePartialModel,
    subtree_tables,
)
from batchscore.plan.rules._walk import root_table

RULE = "factorize_trees"


@dataclass(frozen=True)
class _Dimension:
    """A dimension joined to the fact table: its join and every table of its subtree."""

    join: Join
    table: str
    tables: frozenset[str]


def factorize_trees(plan: LogicalPlan) -> LogicalPlan:
    mode = plan.spec.planner.factorize
    trees = [b for b in plan.models if _plain_trees(b)]
    dims = list(_fact_dimensions(plan))
    if not trees or not dims:
        return plan
    if mode == "never":
        note = Decision(RULE, "off (planner.factorize: never); every join materialized")
        return replace(plan, decisions=(*plan.decisions, note))
    rows = fact_rows(plan)
    shared = _shared_refs(plan, {b.name for b in trees})
    chosen: dict[str, list[_Dimension]] = {b.name: [] for b in trees}
    decisions: list[Decision] = []
    for dim in dims:
        users = [b for b in trees if any(f.table in dim.tables for f in b.features)]
        if not users:
            continue
        cost = _cost(plan, dim, users, rows, shared)
        factorize = mode == "always" or cost.factorize < cost.materialize
        verdict = "factorize" if factorize else "materialize"
        why = "planner.factorize: always" if mode == "always" else "lower cost"
        names = ", ".join(b.name for b in users)
        decisions.append(Decision(RULE, f"{dim.table}: {verdict} ({why}) for {names}; "
                                        f"{cost.describe()}"))  # fmt: skip
        if factorize:
            for b in users:
                chosen[b.name].append(dim)
    done: dict[str, tuple[ModelBinding, dict[str, TreePartialModel]]] = {}
    for b in trees:
        if not chosen[b.name]:
            continue
        split, problem = _split(b, chosen[b.name])
        if problem:
            decisions.append(Decision(RULE, f"{b.name}: kept materialized: {problem}"))
        else:
            done[b.name] = split
    if not done:
        return replace(plan, decisions=(*plan.decisions, *decisions))
    source = _rewrite_spine(plan.source, done)
    models = tuple(done[b.name][0] if b.name in done else b for b in plan.models)
    return replace(plan, source=source, models=models, decisions=(*plan.decisions, *decisions))


def _plain_trees(binding: ModelBinding) -> bool:
    """Tree ensembles scored straight from their inputs (no pipeline stage in front); the
    kernel says so by having IR (LightGBM's native kernel parses its model text once)."""
    return binding.model.kernel.tree_ir() is not None


def _scoring_rate(kernel: Kernel) -> float:
    """Cost of one node test of the materialized model, by how it is scored."""
    if kernel.strategy == "native":
        return TEST_FLOPS["native"]
    return TEST_FLOPS["compiled" if kernel.strategy == "compiled" else "numpy"]


def _fact_side_rate() -> float:
    """The factorized fact side is compiled whenever the driver has a C compiler."""
    return TEST_FLOPS["compiled" if find_compiler() is not None else "numpy"]


def _fact_dimensions(plan: LogicalPlan) -> Iterator[_Dimension]:
    """The joins on the fact table's own spine (left-deep), innermost first."""
    fact = plan.spec.source.table
    spine: list[Join] = []
    node: Node = plan.source
    while isinstance(node, Join):
        spine.append(node)
        node = node.left
    for join in reversed(spine):
        if join.parent == fact:
            yield _Dimension(join, root_table(join.right), frozenset(subtree_tables(join.right)))


def _shared_refs(plan: LogicalPlan, trees: set[str]) -> set[str]:
    """Columns the join must carry anyway: other models' features and the id columns."""
    others = [b for b in plan.models if b.name not in trees]
    return {f.ref for b in others for f in b.features} | {c.ref for c in plan.id_columns}


def _cost(
    plan: LogicalPlan, dim: _Dimension, users: list[ModelBinding], rows: int, shared: set[str]
) -> JoinCost:
    dim_rows = table_rows(plan.tables[dim.table])
    moved: dict[str, float] = {}
    feature_values = fact_values = columns = 0
    flops_m = flops_f = 0.0
    for binding in users:
        ir = binding.model.kernel.tree_ir()
        assert ir is not None
        owner = _owner(binding, {dim.table: dim.tables}, {dim.table: 1})
        nodes_here = sum(int((owner[t.feature] == 1).sum()) for t in ir.trees)
        nodes_all = sum(t.n_internal for t in ir.trees)
        reads = [{int(owner[f]) for f in t.feature} for t in ir.trees]
        split = [t for t, r in zip(ir.trees, reads, strict=True) if 1 in r and r != {1}]
        width = sum((t.n_leaves + 31) // 32 for t in split) + (
            ir.n_outputs if any(r == {1} for r in reads) else 0
        )
        columns += width
        for feature in binding.features:
            if feature.table in dim.tables:
                feature_values += feature.width
                if feature.ref not in shared:
                    owner_info = plan.tables.get(feature.table, plan.tables[dim.table])
                    moved[feature.ref] = value_bytes(owner_info, feature)
            else:
                fact_values += feature.width
        flops_m += rows * nodes_all * _scoring_rate(binding.model.kernel)
        flops_f += dim_rows * nodes_here * TEST_FLOPS["numpy"]
        flops_f += rows * (nodes_all - nodes_here + width) * _fact_side_rate()
    dim_bytes = dim_rows * (sum(moved.values()) + 8.0 * columns) + PASS_BYTES
    return JoinCost(
        table=dim.table,
        fact_rows=rows,
        dim_rows=dim_rows,
        feature_values=feature_values,
        fact_values=fact_values,
        models=len(users),
        decision_columns=columns,
        materialize_bytes=rows * moved_bytes(plan, dim.table, sum(moved.values())),
        materialize_flops=flops_m,
        factorize_bytes=rows * 8.0 * columns + dim_bytes,
        factorize_flops=flops_f,
        joined_anyway=tuple(
            b.name
            for b in plan.models
            if b not in users
            and b.model.kernel.tree_ir() is None
            and any(f.table in dim.tables for f in b.features)
        ),
    )


def _owner(
    binding: ModelBinding, tables: dict[str, frozenset[str]], groups: dict[str, int]
) -> np.ndarray:
    """Per model input: the group (FACT, or the number of the dimension that holds it)."""
    out: list[int] = []
    for feature in binding.features:
        group = next((groups[d] for d, ts in tables.items() if feature.table in ts), FACT)
        out.extend([group] * feature.width)
    return np.asarray(out, dtype=np.int64)


def _split(
    binding: ModelBinding, dims: list[_Dimension]
) -> tuple[tuple[ModelBinding, dict[str, TreePartialModel]], str | None]:
    """The fact-side binding and one TreePartialModel per factorized dimension, and what the
    probe found wrong (None: the split model reproduces the model's own kernel)."""
    kernel = binding.model.kernel
    ir = kernel.tree_ir()
    assert ir is not None
    groups = {d.table: g for g, d in enumerate(dims, start=1)}
    owner = _owner(binding, {d.table: d.tables for d in dims}, groups)
    fz: Factorization = factorize_ensemble(
        ir, owner, {g: t for t, g in groups.items()}, origin=kernel.describe()
    )
    inputs = [f for f in binding.features if not any(f.table in d.tables for d in dims)]
    partials: dict[str, TreePartialModel] = {}
    for dim in dims:
        partial = fz.partials[groups[dim.table]]
        outputs = []
        if partial.mask_width:
            outputs.append(_ref(dim.table, binding.name, "words", partial.mask_width))
        if partial.sum_width:
            outputs.append(_ref(dim.table, binding.name, "sums", partial.sum_width))
        taken = tuple(f for f in binding.features if f.table in dim.tables)
        partials[dim.table] = TreePartialModel(binding.name, taken, partial, tuple(outputs))
        inputs.extend(outputs)
    model = replace(binding.model, kernel=fz.kernel)
    problem = _probe(kernel, ir, fz, owner)
    return (ModelBinding(model, tuple(inputs)), partials), problem


PROBE_ROWS = 256


def _probe(kernel: Kernel, ir: TreeEnsemble, fz: Factorization, owner: np.ndarray) -> str | None:
    """Score a batch both ways: values at and around every split threshold, zeros, NaNs and
    category codes, so every node goes both ways somewhere. Any difference keeps the model
    materialized: never scored wrongly."""
    rng = np.random.default_rng(7)
    X = rng.normal(0.0, 3.0, size=(PROBE_ROWS, ir.n_features))
    for tree in ir.trees:
        for f, t in zip(tree.feature, tree.threshold, strict=True):
            rows = rng.random(PROBE_ROWS) < 0.2
            X[rows, f] = t + rng.choice([-1e-9, 0.0, 1e-9, -1.0, 1.0], size=int(rows.sum()))
    X[rng.random(X.shape) < 0.1] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    cats = rng.random(X.shape) < 0.1
    X[cats] = rng.integers(0, 40, int(cats.sum()))
    blocks = [X[:, owner == FACT]]
    for g, partial in fz.partials.items():
        blocks.extend(partial(X[:, owner == g]))
    with np.errstate(all="ignore"):
        want, got = kernel.score(X), fz.kernel.score(np.hstack(blocks))
    for what in ("prediction", "probability"):
        a, b = getattr(got, what), getattr(want, what)
        if (a is None) != (b is None) or (
            a is not None and not np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)
        ):
            return f"the factorized {what} differs from the model's on a probe batch"
    if got.label is not None and (want.label is None or list(got.label) != list(want.label)):
        return "the factorized labels differ from the model's on a probe batch"
    return None


def _ref(table: str, model: str, what: str, width: int) -> FeatureRef:
    return FeatureRef(table, f"partial__{model}__{what}", "array", width)


def _rewrite_spine(
    node: Node, done: dict[str, tuple[ModelBinding, dict[str, TreePartialModel]]]
) -> Node:
    if not isinstance(node, Join):
        return node
    left = _rewrite_spine(node.left, done)
    table = root_table(node.right)
    mine = tuple(p[table] for _, p in done.values() if table in p)
    if not mine:
        return replace(node, left=left)
    right = node.right
    if isinstance(right, Partial) and right.table == table:
        right = replace(right, models=(*right.models, *mine))
    else:
        right = Partial(right, table, mine)
    return replace(node, left=left, right=right)
