"""Score models that share inputs together: affine models as one matrix product
(`kernels.batched.AffineGroup`), array-strategy tree ensembles as one leaf search over all
their trees (`kernels.trees.merged.TreeGroup`).

Models are grouped by overlapping inputs (connected components); a group's union matrix is
assembled once per batch. A group whose stacked weights would exceed MAX_GROUP_BYTES, or whose
merged trees MAX_GROUP_NODES, is split, so it fits a worker's share of memory.
`planner.batch_models: false` turns the rule off.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from batchscore.kernels.affine import AffineKernel
from batchscore.kernels.batched import AffineGroup, finisher, stack
from batchscore.kernels.trees.kernel import TreeEnsembleKernel
from batchscore.kernels.trees.merged import TreeGroup, merge_key
from batchscore.plan.nodes import Decision, FeatureRef, LogicalPlan, ModelBinding, ModelGroup

MAX_GROUP_BYTES = 256 * 1024 * 1024
MAX_GROUP_NODES = 4_000_000
"""Merged tree arrays stay near 100 MB (a node costs ~25 bytes across the IR arrays)."""


def batch_models(plan: LogicalPlan) -> LogicalPlan:
    if not plan.spec.planner.batch_models:
        return plan
    affine = [b for b in plan.models if isinstance(b.model.kernel, AffineKernel)]
    groups = [g for c in _components(affine) for g in _chunks(c) if len(g) > 1]
    built = [_group(g) for g in groups]
    built += [_tree_group(g) for g in _tree_groups(plan)]
    if not built:
        return plan
    decisions = [
        Decision(
            "batch_models",
            f"group [{', '.join(g.names)}]: {g.group.describe()} per batch "
            f"({len(g.inputs)} union inputs)",
        )
        for g in built
    ]
    return replace(plan, groups=tuple(built), decisions=(*plan.decisions, *decisions))


def _tree_groups(plan: LogicalPlan) -> list[list[ModelBinding]]:
    """Array-strategy tree models that share inputs, by strategy and input rules."""
    by_key: dict[tuple[str, str, str], list[ModelBinding]] = {}
    for binding in plan.models:
        kernel = binding.model.kernel
        if type(kernel) is TreeEnsembleKernel and kernel.strategy != "native":
            by_key.setdefault(merge_key(kernel), []).append(binding)
    out: list[list[ModelBinding]] = []
    for bindings in by_key.values():
        for component in _components(bindings):
            out += [g for g in _node_chunks(component) if len(g) > 1]
    return out


def _node_chunks(group: list[ModelBinding]) -> list[list[ModelBinding]]:
    """Split a group whose merged node arrays would outgrow MAX_GROUP_NODES."""
    out: list[list[ModelBinding]] = [[]]
    nodes = 0
    for binding in group:
        kernel = binding.model.kernel
        assert isinstance(kernel, TreeEnsembleKernel)
        size = sum(t.n_internal + t.n_leaves for t in kernel.ir.trees)
        if out[-1] and nodes + size > MAX_GROUP_NODES:
            out.append([])
            nodes = 0
        out[-1].append(binding)
        nodes += size
    return out


def _union(bindings: list[ModelBinding]) -> tuple[dict[str, FeatureRef], list[np.ndarray], int]:
    """The union inputs and, per model, the union column of each of its input values."""
    inputs: dict[str, FeatureRef] = {}
    for binding in bindings:
        for feature in binding.features:
            inputs.setdefault(feature.ref, feature)
    offsets, start = {}, 0
    for ref, feature in inputs.items():
        offsets[ref] = start
        start += feature.width
    rows = [
        np.concatenate([np.arange(offsets[f.ref], offsets[f.ref] + f.width) for f in b.features])
        for b in bindings
    ]
    return inputs, rows, start


def _tree_group(bindings: list[ModelBinding]) -> ModelGroup:
    inputs, rows, width = _union(bindings)
    kernels = [b.model.kernel for b in bindings]
    assert all(isinstance(k, TreeEnsembleKernel) for k in kernels)
    group = TreeGroup.build(
        [b.name for b in bindings],
        [k for k in kernels if isinstance(k, TreeEnsembleKernel)],
        rows,
        width,
    )
    return ModelGroup(group.names, tuple(inputs.values()), group)


def _components(bindings: list[ModelBinding]) -> list[list[ModelBinding]]:
    """Models linked by any shared input end up in one component (first-seen order kept)."""
    groups: list[tuple[set[str], list[ModelBinding]]] = []
    for binding in bindings:
        refs = {f.ref for f in binding.features}
        touching = [g for g in groups if g[0] & refs]
        merged_refs, merged = set(refs), []
        for group in touching:
            merged_refs |= group[0]
            merged += group[1]
            groups.remove(group)
        groups.append((merged_refs, [*merged, binding]))
    order = {b.name: i for i, b in enumerate(bindings)}
    return [sorted(g[1], key=lambda b: order[b.name]) for g in groups]


def _chunks(group: list[ModelBinding]) -> list[list[ModelBinding]]:
    width = sum({f.ref: f.width for b in group for f in b.features}.values())
    out: list[list[ModelBinding]] = [[]]
    columns = 0
    for binding in group:
        k = _kernel(binding).W.shape[1]
        if out[-1] and (columns + k) * width * 8 > MAX_GROUP_BYTES:
            out.append([])
            columns = 0
        out[-1].append(binding)
        columns += k
    return out


def _kernel(binding: ModelBinding) -> AffineKernel:
    kernel = binding.model.kernel
    assert isinstance(kernel, AffineKernel)
    return kernel


def _group(bindings: list[ModelBinding]) -> ModelGroup:
    inputs, rows, start = _union(bindings)
    kernels = [_kernel(b) for b in bindings]
    slices, at = [], 0
    for kernel in kernels:
        slices.append(slice(at, at + kernel.W.shape[1]))
        at += kernel.W.shape[1]
    group = AffineGroup(
        names=tuple(b.name for b in bindings),
        weights=stack(kernels, rows, start),
        slices=tuple(slices),
        columns=tuple(rows),
        finishers=tuple(finisher(k) for k in kernels),
    )
    return ModelGroup(group.names, tuple(inputs.values()), group)
