"""`batchscore evaluate`: the predictions of committed runs against the true labels, once known.

    evaluate(spark, spec, labels=PATH, on=["id", "ds"], label_column="churned")

Checks first, without Spark (`prepare`): the monitoring table, the labels table (Delta or
Parquet: id and label columns, types that fit the models), the prediction table, and each run
date's run (from the commit lineage: the newest run of the date, whose rows the table holds).

Then ONE Spark action: the labels (non-null) are left-joined with the predictions of every run
on the id columns. Rows of the selected runs and models are grouped by (run date, champion)
(a champion and its challengers together, so they can be paired row by row); labels that
matched no prediction at all form their own groups (dated by an id column holding a selected
run date, e.g. `ds`, else undated). Each group is measured inside the task with the pure
functions of monitor/evaluation.py (`applyInArrow`: memory bounded by one run date's labelled
rows of one champion family); only metric rows come back to the driver.

The driver writes them to the monitoring table (kind `evaluation`) in one commit replacing the
evaluated dates' earlier evaluation rows: corrected labels replace, never duplicate.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from batchscore.errors import DataError, SpecError, did_you_mean
from batchscore.jobs.monitoring import SCHEMA, replace_rows, this_run
from batchscore.monitor import evaluation as ev
from batchscore.monitor.evaluation import OWN, Comparison, ModelEvaluation, ModelInfo
from batchscore.sinks.storage_config import use_storage
from batchscore.spec.model import JobSpec

KIND = "evaluation"
UNMATCHED = "\x00unmatched"
"""The family of label rows that matched no prediction."""


@dataclass(frozen=True)
class Prepared:
    """Everything `prepare` checked and found, before Spark."""

    spec: JobSpec
    labels: str
    labels_format: str  # delta | parquet
    baseline: str  # labels@v<N> or labels
    on: tuple[str, ...]
    label_column: str
    label_type: pa.DataType
    models: tuple[ModelInfo, ...]
    only: tuple[str, ...] | None  # --model: replace only these models' rows
    runs: dict[str | None, str]  # run date -> run id (the newest run of the date)
    versions: dict[str, dict[str, str]]  # run id -> model -> model version
    date_columns: tuple[str, ...]  # on-columns whose values may name a run date
    prediction_columns: tuple[str, ...]


@dataclass(frozen=True)
class EvaluationResult:
    job: str
    labels: str
    baseline: str
    label_column: str
    evaluations: tuple[ModelEvaluation, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    unmatched: dict[str | None, int] = field(default_factory=dict)
    """Labels that matched no prediction, per run date (None: not on an evaluated date)."""
    monitoring_table: str = ""
    table_version: int | None = None
    rows_written: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """One line per run date, then one per challenger and date, then what was written."""
        if not self.evaluations:
            return [f"No committed run of '{self.job}' to evaluate in the range asked."]
        return [
            *ev.summary_lines(self.evaluations, self.comparisons, self.unmatched),
            f"Wrote {self.rows_written:,} evaluation rows to {self.monitoring_table} (version "
            f"{self.table_version}); labels {self.baseline}, {self.seconds:.1f}s.",
        ]


# --------------------------------------------------------------------------------------------
# checks, before Spark


def prepare(
    spec: JobSpec,
    *,
    labels: str,
    on: Sequence[str] | str,
    label_column: str,
    start: str | None = None,
    end: str | None = None,
    models: Sequence[str] | None = None,
) -> Prepared:
    """Every check that needs no Spark; SpecError / DataError (exit 2), one line each."""
    if spec.monitoring is None:
        raise SpecError(
            f"Spec '{spec.name}' has no monitoring table, where evaluate writes its metrics; "
            "add `monitoring: {table: PATH}` to the spec."
        )
    use_storage(spec.storage)  # the spec's object-store options, as binding a job does
    first, last = _date(start, "--from"), _date(end, "--to")
    if first and last and last < first:
        raise SpecError(f"--to {end} is before --from {start}; swap them.")
    on_columns = _on_columns(on)
    schema, labels_format, baseline = _labels_schema(labels)
    out = spec.output.path
    from batchscore.sinks.storage import is_delta_table

    if not is_delta_table(out):
        raise DataError(
            f"Prediction table {out} does not exist (no run of '{spec.name}' committed yet); "
            "run the job before evaluating it."
        )
    predictions = _delta_schema(out)
    ids = [c.rsplit(".", 1)[-1] for c in spec.source.id_columns]
    for column in on_columns:
        if column not in schema.names:
            raise DataError(
                f"Labels table {labels} has no column '{column}' (from --on);"
                f"{did_you_mean(column, schema.names)} its columns: {', '.join(schema.names[:20])}."
            )
        if column not in ids or column not in predictions.names:
            raise SpecError(
                f"--on column '{column}' is not an id column of the predictions of "
                f"'{spec.name}' (id columns: {', '.join(ids)});{did_you_mean(column, ids)} the "
                "labels join the predictions on them."
            )
        _check_key_type(labels, column, schema.field(column).type, predictions.field(column).type)
    if label_column not in schema.names:
        raise DataError(
            f"Labels table {labels} has no label column '{label_column}';"
            f"{did_you_mean(label_column, schema.names)} its columns: "
            f"{', '.join(schema.names[:20])}."
        )
    if label_column in on_columns:
        raise SpecError(f"--label-column '{label_column}' is also an --on column; pick another.")
    infos = _models(spec, models)
    label_type = schema.field(label_column).type
    _check_label_type(labels, label_column, label_type, infos)
    runs, versions = _runs(
        out, spec.name, first.isoformat() if first else None, last.isoformat() if last else None
    )
    dates = tuple(
        c for c in on_columns if pa.types.is_string(schema.field(c).type)
        or pa.types.is_large_string(schema.field(c).type) or pa.types.is_date(schema.field(c).type)
    )  # fmt: skip
    return Prepared(
        spec=spec,
        labels=labels,
        labels_format=labels_format,
        baseline=baseline,
        on=on_columns,
        label_column=label_column,
        label_type=label_type,
        models=infos,
        only=None if not models else tuple(i.name for i in infos),
        runs=runs,
        versions=versions,
        date_columns=dates,
        prediction_columns=tuple(predictions.names),
    )


def _date(text: str | None, flag: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SpecError(f"{flag} '{text}' is not a date; use YYYY-MM-DD.") from None


def _on_columns(on: Sequence[str] | str) -> tuple[str, ...]:
    names = on.split(",") if isinstance(on, str) else list(on)
    columns = tuple(n.strip() for n in names if n.strip())
    if not columns:
        raise SpecError("--on names no column; give the id columns, comma-separated: --on id,ds.")
    return columns


def _labels_schema(path: str) -> tuple[pa.Schema, str, str]:
    """(schema, format, baseline) of a Delta table or a Parquet folder, read without Spark."""
    from batchscore.sinks.storage import is_delta_table

    if "://" not in path and not Path(path).exists():
        raise DataError(
            f"Labels table {path} does not exist; give a Delta table or a Parquet folder."
        )
    if is_delta_table(path):
        from batchscore.sinks.storage import delta_table

        table = delta_table(path)
        return _delta_schema(path), "delta", f"labels@v{table.version()}"
    import pyarrow.dataset as ds

    from batchscore.sinks.storage import filesystem

    try:
        fs, base = filesystem(path)
        dataset = ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive")
        schema = dataset.schema
        empty = not dataset.files
    except Exception as exc:
        from batchscore.errors import first_line

        raise DataError(
            f"Labels table {path} is neither a Delta table nor a Parquet folder "
            f"({first_line(exc)[:200]})."
        ) from None
    if empty:
        raise DataError(f"Labels table {path} holds no Parquet file; write the labels first.")
    return schema, "parquet", "labels"


def _delta_schema(path: str) -> pa.Schema:
    from batchscore.sinks.schema import table_arrow_schema
    from batchscore.sinks.storage import open_table

    return table_arrow_schema(open_table(path))


def _kind(dtype: pa.DataType) -> str:
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_boolean(dtype):
        return "boolean"
    if pa.types.is_date(dtype):
        return "date"
    return str(dtype)


def _check_key_type(labels: str, column: str, ours: pa.DataType, theirs: pa.DataType) -> None:
    if _kind(ours) != _kind(theirs):
        raise DataError(
            f"--on column '{column}' is {ours} in the labels table {labels} but {theirs} in the "
            "predictions; cast it in the labels table so the ids compare."
        )


def _check_label_type(
    labels: str, column: str, dtype: pa.DataType, infos: Sequence[ModelInfo]
) -> None:
    kind = _kind(dtype)
    regressors = [i.name for i in infos if i.kind == "regressor"]
    classifiers = [i.name for i in infos if i.kind == "classifier"]
    if kind == "number" or (kind in ("string", "boolean") and not regressors):
        return
    wanted = []
    if regressors:
        wanted.append(f"numbers for the regressors ({', '.join(regressors)})")
    if classifiers:
        wanted.append(
            f"numbers, strings or booleans for the classifiers ({', '.join(classifiers)})"
        )
    hint = " (evaluate the others apart with --model)" if regressors and classifiers else ""
    raise DataError(
        f"Label column '{column}' of the labels table {labels} is {dtype}; evaluate expects "
        f"{' and '.join(wanted)}{hint}."
    )


def _models(spec: JobSpec, only: Sequence[str] | None) -> tuple[ModelInfo, ...]:
    """The spec's models to evaluate (with --model: those, their champion and challengers),
    each loaded for its classes."""
    from batchscore.plan.bind import load_spec_model

    names = [m.name for m in spec.models]
    chosen = set(names)
    if only:
        for name in only:
            if name not in names:
                raise SpecError(
                    f"--model '{name}' is not a model of '{spec.name}';"
                    f"{did_you_mean(name, names)} models: {', '.join(names)}."
                )
        families = {m.champion for m in spec.models if m.name in only}
        chosen = {m.name for m in spec.models if m.champion in families}
    infos = []
    for model in spec.models:
        if model.name not in chosen:
            continue
        compiled = load_spec_model(model)
        classes = compiled.kernel.classes
        infos.append(
            ModelInfo(
                name=model.name,
                kind="regressor" if classes is None else "classifier",
                classes=None if classes is None else tuple(classes),
                proba=compiled.proba,
                role=model.role,
                champion=model.champion,
            )
        )
    return tuple(infos)


def _runs(
    path: str, job: str, start: str | None, end: str | None
) -> tuple[dict[str | None, str], dict[str, dict[str, str]]]:
    """{run date: run id} of the newest run of each date in [start, end] (its rows are the
    table's: a rerun replaced or followed the earlier ones), and each run's model versions."""
    from batchscore.sinks.log import history

    runs: dict[str | None, str] = {}
    versions: dict[str, dict[str, str]] = {}
    for commit in history(path):  # newest first
        meta = commit.get("metadata") or {}
        run_id = meta.get("batchscore.run_id")
        if not isinstance(run_id, str) or meta.get("batchscore.job", job) != job:
            continue
        if "batchscore.models" not in meta:
            continue  # a schema-evolution commit of the same run
        run_date = meta.get("batchscore.run_date")
        run_date = run_date if isinstance(run_date, str) else None
        if run_date in runs:
            continue
        if (start or end) and (
            run_date is None or (start and run_date < start) or (end and run_date > end)
        ):
            continue
        runs[run_date] = run_id
        models = meta["batchscore.models"]
        models = json.loads(models) if isinstance(models, str) else models or {}
        versions[run_id] = {n: str(e.get("version")) for n, e in models.items() if e}
    return runs, versions


# --------------------------------------------------------------------------------------------
# the Spark job


def evaluate(
    spark: SparkSession,
    spec: JobSpec | str | Path,
    *,
    labels: str | Path,
    on: Sequence[str] | str,
    label_column: str,
    start: str | None = None,
    end: str | None = None,
    models: Sequence[str] | None = None,
) -> EvaluationResult:
    """Evaluate the committed runs of [start, end] (default: every run) against `labels`;
    write the metrics to the spec's monitoring table (kind `evaluation`)."""
    if not isinstance(spec, JobSpec):
        from batchscore.spec.load import load_spec

        spec = load_spec(spec)
    prepared = prepare(
        spec, labels=str(labels), on=on, label_column=label_column, start=start, end=end,
        models=models,
    )  # fmt: skip
    return run_prepared(spark, prepared)


def run_prepared(spark: SparkSession, prepared: Prepared) -> EvaluationResult:
    """The Spark job and the monitoring commit of a prepared evaluation."""
    began = time.perf_counter()
    spec = prepared.spec
    assert spec.monitoring is not None
    result = EvaluationResult(
        spec.name, prepared.labels, prepared.baseline, prepared.label_column,
        monitoring_table=spec.monitoring.table,
    )  # fmt: skip
    if not prepared.runs or not prepared.models:
        return result
    rows = [r.asDict() for r in _frame(spark, prepared).collect()]
    evaluations, comparisons, unmatched = _gather(prepared, rows)
    table = _monitoring_rows(prepared, evaluations, comparisons, unmatched, datetime.now(UTC))
    return replace(
        result,
        evaluations=tuple(evaluations),
        comparisons=tuple(comparisons),
        unmatched=unmatched,
        table_version=replace_rows(spec.monitoring.table, table, _predicate(prepared)),
        rows_written=table.num_rows,
        seconds=time.perf_counter() - began,
    )


def _frame(spark: SparkSession, p: Prepared) -> DataFrame:
    """labels LEFT JOIN predictions, grouped by (run date, champion), measured in the tasks."""
    from batchscore.physical.native_scan import spark_can_open
    from batchscore.sinks.spark_io import read_delta, read_parquet_folder

    names = [m.name for m in p.models]
    preds = _long(read_delta(spark, p.spec.output.path), p, names)
    if p.labels_format == "delta":
        raw = read_delta(spark, p.labels)
    elif spark_can_open(spark, p.labels):
        raw = spark.read.parquet(p.labels)
    else:  # an object store Spark has no Hadoop filesystem for
        raw = read_parquet_folder(spark, p.labels)
    truth = F.col(f"`{p.label_column}`")
    numeric = _kind(p.label_type) in ("number", "boolean")
    labels = raw.where(truth.isNotNull()).select(
        *(F.col(f"`{c}`") for c in p.on),
        truth.cast("string").alias("__truth"),
        (truth.cast("double") if numeric else F.lit(None).cast("double")).alias("__truth_num"),
    )
    run_ids = sorted(set(p.runs.values()))
    joined = labels.join(preds, on=list(p.on), how="left").where(
        F.col("model").isNull() | (F.col("run_id").isin(run_ids) & F.col("model").isin(names))
    )
    dates = {run_id: run_date for run_date, run_id in p.runs.items()}
    run_date = F.when(F.col("run_id").isNotNull(), F.try_element_at(_map(dates), F.col("run_id")))
    evaluated = [d for d in p.runs if d is not None]
    dated: list[Column] = [
        F.when(F.col(f"`{c}`").cast("string").isin(evaluated), F.col(f"`{c}`").cast("string"))
        for c in p.date_columns
    ]
    unmatched_date = F.coalesce(*dated) if dated else F.lit(None).cast("string")
    champions = {m.name: m.champion for m in p.models}
    family = F.when(
        F.col("model").isNotNull(), F.try_element_at(_map(champions), F.col("model"))
    ).otherwise(F.lit(UNMATCHED))
    grouped = joined.select(
        F.when(F.col("model").isNull(), unmatched_date).otherwise(run_date).alias("__run_date"),
        family.alias("__family"),
        *(F.col(f"`{c}`") for c in p.on),
        "model", "model_version", "role", "run_id", "prediction", "label", "probability",
        "__truth", "__truth_num",
    )  # fmt: skip
    task = group_task(p.models, p.on, p.versions)
    return grouped.groupBy("__run_date", "__family").applyInArrow(task, ev.GROUP_DDL)


def _map(mapping: Mapping[str, str | None]) -> Column:
    pairs: list[Column] = []
    for key, value in mapping.items():
        pairs += [F.lit(key), F.lit(value).cast("string")]
    return F.create_map(*pairs) if pairs else F.create_map().cast("map<string,string>")


_WIDE = (("prediction", "DOUBLE"), ("label", "STRING"), ("probability", "ARRAY<DOUBLE>"))


def _long(df: DataFrame, p: Prepared, names: Sequence[str]) -> DataFrame:
    """The predictions as long rows: on-columns, model, model_version, role, run_id,
    prediction, label, probability (wide tables stacked; absent columns null)."""
    present = set(p.prediction_columns)
    ids = [F.col(f"`{c}`") for c in p.on]
    if p.spec.output.layout == "long":

        def column(name: str, dtype: str) -> Column:
            if name in present:
                return F.col(name)
            return F.lit(None).cast(dtype).alias(name)

        return df.select(
            *ids, "model", column("model_version", "string"), column("role", "string"),
            "run_id", "prediction", "label", "probability",
        )  # fmt: skip
    parts = []
    for name in names:
        values = [
            f"`{name}__{c}`" if f"{name}__{c}" in present else f"CAST(NULL AS {t})"
            for c, t in _WIDE
        ]  # fmt: skip
        parts.append(", ".join([f"'{name}'", *values]))
    stack = F.expr(
        f"stack({len(names)}, {', '.join(parts)}) AS (model, prediction, label, probability)"
    )
    return df.select(*ids, "run_id", stack).select(
        *ids, "model", F.lit(None).cast("string").alias("model_version"),
        F.lit(None).cast("string").alias("role"), "run_id", "prediction", "label", "probability",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# inside the tasks


def group_task(
    models: Sequence[ModelInfo], on: Sequence[str], versions: Mapping[str, Mapping[str, str]]
) -> Any:
    """The applyInArrow function measuring one group (a closure: Spark reads its arguments)."""
    infos = {m.name: m for m in models}
    keys = list(on)

    def task(key: tuple[pa.Scalar, ...], table: pa.Table) -> pa.Table:
        run_date, family = key[0].as_py(), key[1].as_py()
        if family == UNMATCHED:
            rows = [(run_date, "", "", "", "", "unmatched_labels", float(table.num_rows), OWN)]
            return ev.group_table(rows)
        return ev.group_table(ev.measure_family(table, run_date, family, infos, keys, versions))

    return task


# --------------------------------------------------------------------------------------------
# back on the driver


def _gather(
    p: Prepared, rows: Iterable[Mapping[str, Any]]
) -> tuple[list[ModelEvaluation], list[Comparison], dict[str | None, int]]:
    """The tasks' metric rows as one evaluation per (run date, model) of the evaluated runs
    (a model without labelled rows gets labelled_rows 0) and one comparison per challenger."""
    found: dict[tuple[str | None, str], dict[str, Any]] = {}
    unmatched: dict[str | None, int] = {day: 0 for day in p.runs}
    for row in rows:
        day = row["run_date"]
        if row["metric"] == "unmatched_labels":
            key = day if day in p.runs else None
            unmatched[key] = unmatched.get(key, 0) + int(row["value"])
            continue
        slot = found.setdefault((day, row["model"]), {"own": {}, "diffs": {}})
        slot.update(run_id=row["run_id"], model_version=row["model_version"], role=row["role"])
        slot["own" if row["baseline"] == OWN else "diffs"][row["metric"]] = row["value"]
    evaluations, comparisons = [], []
    for day, run_id in sorted(p.runs.items(), key=lambda kv: kv[0] or ""):
        for info in p.models:
            slot = found.get((day, info.name), {"own": {"labelled_rows": 0.0}, "diffs": {}})
            version = slot.get("model_version") or p.versions.get(run_id, {}).get(info.name, "")
            evaluations.append(
                ModelEvaluation(
                    day, slot.get("run_id") or run_id, info.name, version,
                    slot.get("role") or info.role, info.champion, dict(slot["own"]),
                )
            )  # fmt: skip
            if info.role != "champion":
                comparisons.append(_comparison(day, info, slot["diffs"]))
    return evaluations, comparisons, unmatched


def _comparison(day: str | None, info: ModelInfo, diffs: Mapping[str, float]) -> Comparison:
    differences = {
        name[: -len("_diff")]: ev.Difference(
            value,
            diffs.get(f"{name}_low", math.nan),
            diffs.get(f"{name}_high", math.nan),
        )
        for name, value in diffs.items()
        if name.endswith("_diff")
    }
    return Comparison(
        day, info.name, info.role, info.champion, ev.MAIN_METRIC[info.kind],
        int(diffs.get("paired_rows", 0)), differences,
    )  # fmt: skip


def _monitoring_rows(
    p: Prepared,
    evaluations: Sequence[ModelEvaluation],
    comparisons: Sequence[Comparison],
    unmatched: Mapping[str | None, int],
    computed_at: datetime,
) -> pa.Table:
    """Rows of the monitoring table (SCHEMA), kind `evaluation`."""
    rows: list[dict[str, Any]] = []
    by_key = {(c.run_date, c.challenger): c for c in comparisons}
    for e in evaluations:
        metrics = [(m, v, p.baseline) for m, v in e.metrics.items()]
        metrics.append(("unmatched_labels", float(unmatched.get(e.run_date, 0)), p.baseline))
        comparison = by_key.get((e.run_date, e.model))
        if comparison is not None:
            base = f"champion:{comparison.champion}"
            metrics.append(("paired_rows", float(comparison.paired_rows), base))
            for name, d in comparison.differences.items():
                for suffix, value in (("diff", d.diff), ("diff_low", d.low), ("diff_high", d.high)):
                    if not math.isnan(value):
                        metrics.append((f"{name}_{suffix}", value, base))
        for metric, value, baseline in metrics:
            rows.append(
                {
                    "run_id": e.run_id, "job": p.spec.name, "run_date": e.run_date,
                    "model": e.model, "model_version": e.model_version, "kind": KIND,
                    "feature": p.label_column, "metric": metric, "value": float(value),
                    "baseline": baseline, "threshold": None, "alert": False,
                    "computed_at": computed_at,
                }
            )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _predicate(p: Prepared) -> str:
    """The evaluated run dates' earlier evaluation rows (of the evaluated models with
    --model), which this evaluation replaces."""
    days = " OR ".join(f"({this_run(p.spec.name, day)})" for day in p.runs)
    predicate = f"({days}) AND kind = '{KIND}'"
    if p.only:
        names = ", ".join(f"'{name}'" for name in p.only)
        predicate += f" AND model IN ({names})"
    return predicate
