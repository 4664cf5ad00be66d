"""Score affine models that share inputs as one matrix product (`kernels.batched.AffineGroup`).

Models are grouped by overlapping inputs (connected components); a group's union matrix is
assembled once per batch and multiplied once by the stacked weights. A group whose stacked
weights would exceed MAX_GROUP_BYTES is split, so W fits a worker's share of memory.
`planner.batch_models: false` turns the rule off.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from batchscore.kernels.affine import AffineKernel
from batchscore.kernels.batched import AffineGroup, finisher, stack
from batchscore.plan.nodes import Decision, FeatureRef, LogicalPlan, ModelBinding, ModelGroup

MAX_GROUP_BYTES = 256 * 1024 * 1024


def batch_models(plan: LogicalPlan) -> LogicalPlan:
    if not plan.spec.planner.batch_models:
        return plan
    affine = [b for b in plan.models if isinstance(b.model.kernel, AffineKernel)]
    groups = [g for c in _components(affine) for g in _chunks(c) if len(g) > 1]
    if not groups:
        return plan
    built = tuple(_group(g) for g in groups)
    decisions = [
        Decision(
            "batch_models",
            f"group [{', '.join(g.names)}]: one {len(g.inputs)}-input x "
            f"{g.group.weights.shape[1]}-column product per batch instead of {len(g.names)}",
        )
        for g in built
    ]
    return replace(plan, groups=built, decisions=(*plan.decisions, *decisions))


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
