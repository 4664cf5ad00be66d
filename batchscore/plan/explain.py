"""`batchscore explain`: the plan as text, with every decision and the numbers behind it."""

from __future__ import annotations

import os

from batchscore.kernels.base import Kernel
from batchscore.kernels.trees.kernel import TreeEnsembleKernel
from batchscore.kernels.trees.merged import TreeGroup
from batchscore.plan.lookups import may_look_up
from batchscore.plan.nodes import FeatureRef, LogicalPlan, ModelBinding, Node, Partial, Scan
from batchscore.plan.spread import describe_spread
from batchscore.sinks.storage import is_object_store, scheme


def compiled_trees(plan: LogicalPlan) -> tuple[float, str]:
    """Seconds this process spent compiling tree models for `plan`, and one phrase for the run
    summary ("" when no model is compiled)."""
    kernels: list[Kernel] = [b.model.kernel for b in plan.models]
    kernels += [g.group.merged for g in plan.groups if isinstance(g.group, TreeGroup)]
    trees = [k for k in kernels if isinstance(k, TreeEnsembleKernel)]
    infos = [forest.info for kernel in trees for forest in kernel.compiled_forests()]
    if not infos:
        return 0.0, ""
    cold = [i.seconds for i in infos if not i.cache_hit]
    cached = len(infos) - len(cold)
    seconds = float(sum(cold))
    phrase = f"{len(infos)} compiled tree kernel(s): {seconds:.1f} s compiling"
    if cached:
        phrase += f", {cached} from the cache"
    return seconds, phrase


def explain(plan: LogicalPlan) -> str:
    spec = plan.spec
    out = [
        f"== batchscore plan: {spec.name}"
        + (f" (run date {spec.run_date})" if spec.run_date else "")
        + " =="
    ]
    output = plan.output
    parts = f" partition_by={output.partition_by}" if output.partition_by else ""
    out.append(f"Write delta {output.path}  layout={output.layout} mode={output.mode}{parts}")
    out.append(f"  Score {len(plan.models)} model(s) with mapInArrow")
    out.extend("    " + _model_line(binding) for binding in plan.models)
    for group in plan.groups:
        out.append(
            f"    batched group [{', '.join(group.names)}]: union of {len(group.inputs)} inputs, "
            f"{group.group.describe()}"
        )
    out.extend(_node_lines(plan, plan.source, depth=1))
    out.append("Decisions:")
    out.extend(f"  [{d.rule}] {d.text}" for d in plan.decisions)
    out.append(f"  [spread] {plan.spec.source.table}: {describe_spread(plan)}")
    return "\n".join(out)


def _model_line(binding: ModelBinding) -> str:
    model = binding.model
    features = ", ".join(_input_label(f) for f in binding.features)
    return (
        f"{model.name} (version {model.version}, output {model.output}): "
        f"{model.kernel.describe()}; "
        f"{binding.n_inputs} inputs from {features}"
    )


def _node_lines(plan: LogicalPlan, node: Node, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(node, Scan):
        return [pad + _scan_line(plan, node)]
    if isinstance(node, Partial):
        parts = "; ".join(
            f"{m.model}[{m.width}] <- {', '.join(_input_label(f) for f in m.inputs)}"
            for m in node.models
        )
        floats = sum(m.width for m in node.models)
        return [
            f"{pad}PartialScore {node.table} ({floats} float(s) per row joined instead of "
            f"features): {parts}",
            *_node_lines(plan, node.child, depth + 1),
        ]
    keys = " AND ".join(f"{node.parent}.{left} = {node.table}.{right}" for left, right in node.on)
    held = ""
    if node.on_missing == "quarantine":
        held = f"  (no match: quarantined to {plan.output.quarantine})"
    elif may_look_up(plan, node):
        held = "  (in the scoring task, unless row rules read it in Spark)"
    return [
        f"{pad}LeftJoin {node.table} ON {keys}{held}",
        *_node_lines(plan, node.left, depth + 1),
        *_node_lines(plan, node.right, depth + 1),
    ]


def _input_label(feature: FeatureRef) -> str:
    if feature.column.startswith("partial__"):
        return f"{feature.table}.{feature.column}[{feature.width}]"
    return feature.label if feature.width == 1 else f"{feature.label}[{feature.width}]"


def _scan_line(plan: LogicalPlan, scan: Scan) -> str:
    info = plan.tables[scan.table]
    version = f" v{scan.version}" if scan.version is not None else ""
    line = f"Scan {scan.table} ({scan.format}{version}) {scan.path}"
    if scan.columns is not None:
        line += f" columns=[{', '.join(scan.columns)}]"
    if scan.partition_filters:
        filters = " AND ".join(f"{c} {op} {v!r}" for c, op, v in scan.partition_filters)
        files = info.select_files(list(scan.partition_filters))
        line += f" partitions: {filters} ({len(files)} of {len(info.files)} files)"
    if scan.predicate:
        line += f" where: {scan.predicate}"
    return f"{line}  reader: {scan_reader(scan)}"


def scan_reader(scan: Scan) -> str:
    """Which reader the scan gets (physical.native_scan decides the same way at run time)."""
    if is_object_store(scan.path):
        return (
            "batchscore's (delta-rs/pyarrow in the Python workers; Spark's own only where its "
            f"classpath has a Hadoop filesystem for {scheme(scan.path)}://)"
        )
    native = os.environ.get("BATCHSCORE_NATIVE_SCAN", "1").strip().lower()
    if scan.format == "delta" and native in ("0", "false", "no", "off"):
        return "batchscore's (BATCHSCORE_NATIVE_SCAN=0)"
    return "Spark's Parquet reader"
