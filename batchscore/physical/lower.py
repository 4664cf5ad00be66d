"""Logical plan -> Spark DataFrame of predictions.

Scans read through the project's Delta reader (partition filters from the planner) or Spark's
own Parquet reader; every column is renamed `table__column` so joined names never collide;
dimensions small enough are broadcast; one mapInArrow pass scores every model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema, to_arrow_type

from batchscore.monitor.rules import Rule
from batchscore.physical.assemble import Column
from batchscore.physical.connect import default_parallelism, partition_count
from batchscore.physical.frames import project, renamed
from batchscore.physical.lookups import (
    Deferred,
    LookupJoin,
    duplicate_key_error,
    read_on_driver,
    scan_schema,
)
from batchscore.physical.native_scan import (
    read_delta_native,
    spark_can_open,
    split_rows,
    surely_fewer_tasks,
)
from batchscore.physical.null_counts import flags_of
from batchscore.physical.partial import AffineShare, PartialSpec, PartialTask
from batchscore.physical.roles import bucket_column, has_canaries, serving_ranges
from batchscore.physical.score import (
    IdField,
    ScoringGroup,
    ScoringModel,
    ScoringTask,
    long_names,
)
from batchscore.physical.threads import task_threads
from batchscore.physical.validation import (
    any_of,
    quarantine_condition,
    reason,
    user_rule_columns,
)
from batchscore.plan import checked_keys
from batchscore.plan.lookups import may_look_up
from batchscore.plan.nodes import (
    Join,
    LogicalPlan,
    ModelBinding,
    Node,
    Partial,
    PartialModel,
    Scan,
    TreePartialModel,
    children,
    present_flag,
    qualified,
)
from batchscore.plan.spread import (
    MAX_SPLIT,
    fact_file_sizes,
    shuffle_saving,
    split_saving,
    worth_spreading,
)
from batchscore.sinks.spark_io import read_delta, read_parquet_folder

BROADCAST_BYTES = 256 * 1024 * 1024
PRESENT = present_flag("")


def lower(
    spark: SparkSession,
    plan: LogicalPlan,
    *,
    run_id: str,
    scored_at: datetime,
    check_keys: bool = True,
) -> DataFrame:
    """The predictions as a DataFrame (one mapInArrow pass), for callers that go on in Spark.

    A job that only writes them uses `lower_for_write`: scoring inside the writer saves the
    outputs' trip through the JVM and a second pass through Python workers.
    """
    deferred = Deferred([])
    joined = scoring_input(spark, plan, check_keys=check_keys, deferred=deferred)
    task = scoring_task(spark, plan, run_id=run_id, scored_at=scored_at)
    task = replace(task, lookups=deferred.frozen())
    return joined.mapInArrow(task, output_schema(joined.schema, plan))


def lower_source(
    spark: SparkSession,
    plan: LogicalPlan,
    *,
    check_keys: bool = True,
    deferred: Deferred | None = None,
) -> DataFrame:
    """The fact rows with every dimension left-joined: what a materializing engine scores.
    `deferred`: joins that may be done in the scoring task are left out and added to it
    (physical.lookups)."""
    return _node(spark, plan, plan.source, check_keys, deferred)


def _node(
    spark: SparkSession,
    plan: LogicalPlan,
    node: Node,
    check_keys: bool,
    deferred: Deferred | None = None,
) -> DataFrame:
    if isinstance(node, Scan):
        if node.table == plan.spec.source.table and worth_spreading(plan):
            return _spread(spark, plan, node)
        return _scan(spark, node)
    if isinstance(node, Partial):
        return _partial(plan, node, _node(spark, plan, node.child, check_keys))
    left = _node(spark, plan, node.left, check_keys, deferred)
    if deferred is not None and _looked_up_unlowered(plan, node, left, deferred):
        return left
    if isinstance(node.right, Partial):  # its input's schema serves a lookup too
        child = _node(spark, plan, node.right.child, check_keys)
        right, read = _partial(plan, node.right, child), child.schema
    else:
        right, read = _node(spark, plan, node.right, check_keys), None
    if deferred is not None and _looked_up(plan, node, left, right, read, deferred):
        return left
    if check_keys:
        _check_unique_keys(spark, plan, node, right)
    # true where the join found the row: quarantine joins filter on it, and for every join it
    # tells a null prediction from a missing dimension row (physical.null_counts)
    right = right.withColumn(present_flag(node.table), F.lit(True))
    if _dimension_bytes(plan, node.right) <= BROADCAST_BYTES:
        right = F.broadcast(right)
    condition = [
        F.col(qualified(node.parent, left)) == F.col(qualified(node.table, right))
        for left, right in node.on
    ]
    return left.join(right, on=condition, how="left")


def _looked_up_unlowered(
    plan: LogicalPlan, join: Join, left: DataFrame, deferred: Deferred
) -> bool:
    """A plain dimension scan looked up from its rows read on the driver, typed by the schema
    its scan would have (lookups.scan_schema): no Spark frame of it at all, where building
    one costs Spark ~50 ms of planning a table. False: lowered as any other."""
    scan = join.right
    if not isinstance(scan, Scan) or not may_look_up(plan, join):
        return False
    schema = scan_schema(scan, plan.tables[scan.table].schema)
    return schema is not None and _looked_up(plan, join, left, schema, None, deferred)


def _looked_up(
    plan: LogicalPlan,
    join: Join,
    left: DataFrame,
    right: DataFrame | T.StructType,
    read: T.StructType | None,
    deferred: Deferred,
) -> bool:
    """Leave `join` to the scoring task when physical.lookups allows it. `read`: the schema
    of the scan below a partial (`join.right`), whose scores the driver may compute."""
    if not may_look_up(plan, join):
        return False
    ((key, _),) = join.on
    left_type = to_arrow_type(left.schema[qualified(join.parent, key)].dataType)
    wanted = [f.ref for f in plan.features() if f.table == join.table]
    node = join.right
    on_driver = None
    if isinstance(node, Partial) and read is not None:  # plan.lookups: a partial over a scan
        on_driver = partial(_partials_on_driver, plan, node, read)
    lookup = LookupJoin.build(join, right, left_type, wanted, on_driver)
    if lookup is not None:
        deferred.joins.append(lookup)
    return lookup is not None


SPREAD_ENV = "BATCHSCORE_SPREAD"
"""`BATCHSCORE_SPREAD=0` keeps the fact scan's own partitioning (see `_spread`)."""


def _spread(spark: SparkSession, plan: LogicalPlan, scan: Scan) -> DataFrame:
    """The fact rows over at least as many tasks as Spark runs at once, when scoring outweighs
    the cost (plan.spread): split by row position where Spark's own Parquet reader reads them,
    else shuffled. Files small and few enough to be surely read as fewer tasks are split with
    no look at Spark's plan (listing a scan's tasks costs ~30 ms a scan)."""
    target = default_parallelism(spark)
    if os.environ.get(SPREAD_ENV, "1") == "0" or target <= 1:
        return _scan(spark, scan)
    splits = target <= MAX_SPLIT and split_saving(plan) > 0
    if splits and surely_fewer_tasks(spark, fact_file_sizes(plan), target):
        split = _spark_read(spark, scan, split=target)
        if split is not None:
            return _finish(scan, split)
    fact = _scan(spark, scan)
    partitions = partition_count(fact)  # None over Spark Connect: spread, as the cost model says
    if partitions is not None and partitions >= target:
        return fact
    if splits:
        split = _spark_read(spark, scan, split=-(-target // (partitions or 1)))
        if split is not None:
            return _finish(scan, split)
    if shuffle_saving(plan) <= 0:
        return fact
    keys = [F.col(f.name) for f in fact.schema.fields if isinstance(f.dataType, _HASHABLE)]
    # hash partitioning needs no sort (round robin sorts every row first so that a retried
    # task gets the same rows); rows equal in every hashed column land together, which is fine
    return fact.repartition(target, *keys) if keys else fact.repartition(target)


_HASHABLE = (
    T.NumericType,
    T.StringType,
    T.BooleanType,
    T.DateType,
    T.TimestampType,
    T.TimestampNTZType,
)


def _scan(spark: SparkSession, scan: Scan) -> DataFrame:
    df = _spark_read(spark, scan)
    return _finish(scan, df if df is not None else _project_read(spark, scan))


def _spark_read(spark: SparkSession, scan: Scan, *, split: int = 1) -> DataFrame | None:
    """The scan's rows by Spark's own Parquet reader (`split`: as that many copies, see
    native_scan.split_rows); None where that reader cannot give them."""
    columns = list(scan.columns) if scan.columns is not None else None
    if scan.format == "delta":
        filters = list(scan.partition_filters) or None
        return read_delta_native(
            spark, scan.path, version=scan.version, partition_filters=filters, columns=columns,
            split=split,
        )  # fmt: skip
    if not spark_can_open(spark, scan.path):
        return None
    df = split_rows(spark.read.parquet(scan.path), split)
    if df is None:
        return None
    return df if columns is None else project(df, columns)


def _project_read(spark: SparkSession, scan: Scan) -> DataFrame:
    """The scan's rows by the project's readers: Delta tables Spark's reader cannot read
    (deletion vectors, column mapping, ...) and object stores without a Hadoop filesystem."""
    columns = list(scan.columns) if scan.columns is not None else None
    if scan.format == "delta":
        filters = list(scan.partition_filters) or None
        return read_delta(
            spark, scan.path, version=scan.version, partition_filters=filters, columns=columns
        )
    df = read_parquet_folder(spark, scan.path)
    return df if columns is None else project(df, columns)


def _finish(scan: Scan, df: DataFrame) -> DataFrame:
    if scan.predicate:
        df = df.filter(scan.predicate)
    return renamed(df, (qualified(scan.table, c) for c in df.columns))


def _partial(plan: LogicalPlan, node: Partial, child: DataFrame) -> DataFrame:
    """Score the dimension's share of each model; keep only what is used above it."""
    task, inputs, schema = _partial_task(plan, node, child.schema)
    return child.select(*inputs).mapInArrow(task, schema)


def _partial_task(
    plan: LogicalPlan, node: Partial, child: T.StructType
) -> tuple[PartialTask, list[str], T.StructType]:
    """The partial scoring of `node` over rows of schema `child`: the task, the columns it
    reads and the schema it gives."""
    needed = _needed_outside(plan, node)
    keep = tuple(c for c in child.names if c in needed or c.startswith(PRESENT))
    partials = tuple(_partial_spec(model) for model in node.models)
    schema = T.StructType(
        [child[c] for c in keep]
        + [
            T.StructField(name, T.ArrayType(T.DoubleType()), True)
            for p in partials
            for name in p.outputs
        ]
    )
    inputs = list(dict.fromkeys([*(c.ref for p in partials for c in p.columns), *keep]))
    return PartialTask(partials, keep), inputs, schema


def _partials_on_driver(
    plan: LogicalPlan, node: Partial, child: T.StructType, wanted: T.StructType
) -> pa.Table | None:
    """The partial scores of a looked-up dimension computed on the driver from its rows read
    there (None where they cannot be read there: Spark computes them). A dimension small
    enough to ship with the task is scored once, with no Spark stage and no join of its
    scores."""
    assert isinstance(node.child, Scan)
    task, inputs, schema = _partial_task(plan, node, child)
    rows = read_on_driver(node.child, T.StructType([child[c] for c in inputs]))
    if rows is None:
        return None
    batches = list(task(rows.to_batches()))
    scored = pa.Table.from_batches(batches) if batches else to_arrow_schema(schema).empty_table()
    target = to_arrow_schema(wanted)
    return scored.select(target.names).cast(target)


def _partial_spec(model: PartialModel | TreePartialModel) -> PartialSpec:
    columns = tuple(Column(f.ref, f.label, f.kind, f.width) for f in model.inputs)
    if isinstance(model, TreePartialModel):
        return PartialSpec(columns, model.partial, tuple(f.ref for f in model.outputs))
    return PartialSpec(columns, AffineShare(model.weights), (model.output.ref,))


def _needed_outside(plan: LogicalPlan, node: Partial) -> set[str]:
    """Columns something outside this Partial's subtree reads: keys, features, ids, partials."""
    inside = {id(n) for n in _walk(node.child)}
    needed = {c.ref for c in plan.id_columns} | {f.ref for f in plan.features()}
    for other in plan.nodes():
        if isinstance(other, Join):
            needed |= {qualified(other.parent, left) for left, _ in other.on}
            needed |= {qualified(other.table, right) for _, right in other.on}
        elif isinstance(other, Partial) and other is not node and id(other) not in inside:
            needed |= {f.ref for m in other.models for f in m.inputs}
    return needed


def _walk(node: Node) -> list[Node]:
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(children(current))
    return out


def _check_unique_keys(
    spark: SparkSession, plan: LogicalPlan, join: Join, right: DataFrame
) -> None:
    """Duplicate dimension keys would multiply fact rows: refuse before scoring anything. The
    check reads the dimension's own scan (plan.checked_keys.keyed_scan: what joins and partial
    scores below it add keeps its rows; `right`, the lowered right side, is that scan when the
    join reads the table alone), and a snapshot found unique before is not checked again."""
    memo = checked_keys.memo_key(plan, join)
    if checked_keys.already_checked(memo):
        return
    scan = checked_keys.keyed_scan(join)
    dimension = right if join.right is scan else _scan(spark, scan)
    keys = [qualified(join.table, r) for _, r in join.on]
    dup = dimension.groupBy(*keys).count().where(F.col("count") > 1).limit(1).collect()
    if dup:
        values = ", ".join(f"{k.split('__', 1)[1]}={dup[0][k]!r}" for k in keys)
        raise duplicate_key_error(join.table, values, dup[0]["count"])
    checked_keys.remember(memo)


def _dimension_bytes(plan: LogicalPlan, node: Node) -> int:
    return sum(
        sum(f[2] for f in plan.tables[s.table].files) for s in _walk(node) if isinstance(s, Scan)
    )


def scoring_task(
    spark: SparkSession,
    plan: LogicalPlan,
    *,
    run_id: str,
    scored_at: datetime,
    roles: bool = False,
) -> ScoringTask:
    threads = task_threads(spark, lambda: _scoring_stage_tasks(spark, plan))
    index = {b.name: i for i, b in enumerate(plan.models)}
    groups = tuple(
        ScoringGroup(
            tuple(index[name] for name in g.names),
            tuple(Column(f.ref, f.label, f.kind, f.width) for f in g.inputs),
            g.group,
        )
        for g in plan.groups
    )
    ranges = serving_ranges(plan.spec)
    specs = {m.name: m for m in plan.spec.models}
    models = tuple(
        replace(
            _scoring_model(b, _join_flags(plan)),
            role=specs[b.name].role,
            serves=ranges[b.name],
        )
        for b in plan.models
    )
    return ScoringTask(
        groups=groups,
        models=models,
        ids=tuple(IdField(c.ref, c.output_name) for c in plan.id_columns),
        layout=plan.output.layout,
        run_id=run_id,
        scored_at=scored_at,
        threads=threads,
        roles=roles,
    )


def _scoring_stage_tasks(spark: SparkSession, plan: LogicalPlan) -> int | None:
    """Tasks of the stage that scores: the fact scan's, when every join is broadcast and the
    scan is not spread (None otherwise: a shuffle sets the count, and over Spark Connect, which
    cannot list splits without a job). Listing the scan's splits runs no Spark job."""
    nodes = _walk(plan.source)
    if worth_spreading(plan) or any(
        isinstance(n, Join) and _dimension_bytes(plan, n.right) > BROADCAST_BYTES for n in nodes
    ):
        return None
    fact = plan.spec.source.table
    scan = next((n for n in nodes if isinstance(n, Scan) and n.table == fact), None)
    return None if scan is None else partition_count(_scan(spark, scan))


def _scoring_model(binding: ModelBinding, flags: dict[str, str]) -> ScoringModel:
    model = binding.model
    columns = tuple(Column(f.ref, f.label, f.kind, f.width) for f in binding.features)
    present = flags_of([f.table for f in binding.features], flags)
    return ScoringModel(
        model.name, model.version, model.kernel, model.output == "predict_proba", columns, present
    )


def _join_flags(plan: LogicalPlan) -> dict[str, str]:
    """The present flag of every joined table."""
    return {j.table: present_flag(j.table) for j in plan.joins()}


def output_schema(joined: T.StructType, plan: LogicalPlan, *, roles: bool = False) -> T.StructType:
    ids = [IdField(c.ref, c.output_name) for c in plan.id_columns]
    id_fields = [T.StructField(i.name, joined[i.ref].dataType, True) for i in ids]
    probability = T.ArrayType(T.DoubleType(), containsNull=True)
    prediction = [
        T.StructField("prediction", T.DoubleType(), True),
        T.StructField("label", T.StringType(), True),
        T.StructField("probability", probability, True),
    ]
    tail = [
        T.StructField("run_id", T.StringType(), True),
        T.StructField("scored_at", T.TimestampType(), True),
    ]
    if plan.output.layout == "long":
        head = [
            T.StructField("model", T.StringType(), True),
            T.StructField("model_version", T.StringType(), True),
        ]
        if roles:
            head += [
                T.StructField("role", T.StringType(), True),
                T.StructField("served", T.BooleanType(), True),
            ]
        fields = [*id_fields, *head, *prediction, *tail]
        assert [f.name for f in fields] == long_names(ids, roles=roles)
        return T.StructType(fields)
    fields = list(id_fields)
    for binding in plan.models:
        fields += [T.StructField(f"{binding.name}__{f.name}", f.dataType, True) for f in prediction]
        if roles:
            fields.append(T.StructField(f"{binding.name}__served", T.BooleanType(), True))
    fields += tail
    return T.StructType(fields)


def scoring_input(
    spark: SparkSession,
    plan: LogicalPlan,
    *,
    check_keys: bool = True,
    rules: Sequence[Rule] = (),
    counted: Sequence[Rule] = (),
    deferred: Deferred | None = None,
) -> DataFrame:
    """The joined rows, narrowed to the id columns and the features the scoring task reads
    (rows that a join with `on_missing: quarantine` or a quarantine rule refused left out),
    plus the columns of the user rules among `counted` (the scoring task counts them).

    `deferred`: small dimensions the task may join itself (physical.lookups) are left out of
    the frame (their keys kept) and added to `deferred`, with the columns the task's batches
    must have once joined; not when quarantine rules or counted user rules read the joined
    rows in Spark (a join with `on_missing: quarantine` is never looked up itself)."""
    refused = _refused(plan, rules)
    user_columns = user_rule_columns(counted, list(plan.spec.tables))
    if user_columns or quarantine_condition(rules, list(plan.spec.tables)) is not None:
        deferred = None  # Spark reads the joined rows for these rules
    joined = lower_source(spark, plan, check_keys=check_keys, deferred=deferred)
    if refused is not None:
        joined = joined.where(~refused)
    inputs = [c.ref for c in plan.id_columns] + [f.ref for f in plan.features()]
    used = {f.table for f in plan.features()}
    inputs += [flag for table, flag in _join_flags(plan).items() if table in used]
    extra = list(user_columns)
    if has_canaries(plan.spec):
        extra.append(bucket_column(plan.spec.name, [c.ref for c in plan.id_columns]))
    if extra:  # a few computed columns, then every column wanted by name in one projection
        joined = joined.select("*", *extra)
        inputs += joined.columns[-len(extra) :]
    if deferred is None or not deferred.joins:
        return project(joined, dict.fromkeys(inputs))
    deferred.names = tuple(dict.fromkeys(inputs))
    added = {n for j in deferred.joins for n in (*j.columns.column_names, j.flag)}
    kept = [c for c in deferred.names if c not in added] + [j.left for j in deferred.joins]
    return project(joined, dict.fromkeys(kept))


def _refused(plan: LogicalPlan, rules: Sequence[Rule]) -> Any:
    """Rows kept out of scoring: a quarantine join found nothing, or a quarantine rule broke."""
    flags = _quarantine_flags(plan)
    conditions = [F.col(flag).isNull() for flag in flags.values()]
    rule = quarantine_condition(rules, list(plan.spec.tables))
    if rule is not None:
        conditions.append(rule)
    return any_of(conditions)


def lower_for_write(
    spark: SparkSession,
    plan: LogicalPlan,
    *,
    run_id: str,
    scored_at: datetime,
    check_keys: bool = True,
    rules: Sequence[Rule] = (),
    counted: Sequence[Rule] = (),
    roles: bool = False,
) -> tuple[DataFrame, ScoringTask, pa.Schema]:
    """(unscored input, scoring task, Arrow schema of its output) for a fused Delta write:
    `write_delta(input, ..., transform=task, transform_schema=schema)` scores in the writer."""
    deferred = Deferred([])
    joined = scoring_input(
        spark, plan, check_keys=check_keys, rules=rules, counted=counted, deferred=deferred
    )
    task = scoring_task(spark, plan, run_id=run_id, scored_at=scored_at, roles=roles)
    task = replace(task, lookups=deferred.frozen())
    schema = to_arrow_schema(output_schema(joined.schema, plan, roles=roles), timezone="UTC")
    return joined, task, schema


def _quarantine_flags(plan: LogicalPlan) -> dict[str, str]:
    """Flag column per join with `on_missing: quarantine` (null where no row matched)."""
    return {j.table: present_flag(j.table) for j in plan.joins() if j.on_missing == "quarantine"}


def quarantined_rows(
    spark: SparkSession,
    plan: LogicalPlan,
    *,
    run_id: str,
    scored_at: datetime,
    rules: Sequence[Rule] = (),
) -> DataFrame | None:
    """The rows kept out of scoring: their ids, which quarantine joins found nothing, why
    (`reason`: the missing joins and every quarantine rule the row breaks, with its value),
    the run. None when nothing quarantines. Computed from the same plan and conditions as
    `scoring_input`, so the two partition the fact rows exactly."""
    refused = _refused(plan, rules)
    if refused is None:
        return None
    flags = _quarantine_flags(plan)
    joined = lower_source(spark, plan, check_keys=False).where(refused)
    missing = F.concat_ws(
        ",", *(F.when(F.col(flag).isNull(), F.lit(table)) for table, flag in flags.items())
    )
    joins = F.concat_ws(
        "; ",
        *(
            F.when(F.col(flag).isNull(), F.lit(f"missing join row in '{table}'"))
            for table, flag in flags.items()
        ),
    )
    why = F.concat_ws("; ", joins, reason(rules, list(plan.spec.tables)))
    return joined.select(
        *(F.col(c.ref).alias(c.output_name) for c in plan.id_columns),
        (missing if flags else F.lit("")).alias("missing_join"),
        F.regexp_replace(why, "^; |; $", "").alias("reason"),
        F.lit(run_id).alias("run_id"),
        F.lit(scored_at).cast("timestamp").alias("quarantined_at"),
    )
