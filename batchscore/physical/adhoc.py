"""`bs.score(df, models=[...])`: score any Spark DataFrame, no spec or Delta table needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_type

from batchscore.errors import DataError, SpecError, did_you_mean
from batchscore.models.compiled import (
    CompiledModel,
    check_feature_count,
    compile_from_object,
    compile_from_spec,
)
from batchscore.physical.assemble import Column
from batchscore.physical.score import IdField, ScoringModel, ScoringTask
from batchscore.plan.catalog import column_kind

_KEYS = {"name", "model", "features", "output", "sha256", "version", "strategy"}


def score_dataframe(
    df: DataFrame, *, models: Sequence[Mapping[str, Any]], id_columns: Sequence[str], layout: str
) -> DataFrame:
    compiled = [_compile(i, m) for i, m in enumerate(models)]
    columns = {c: f"c{i}__{c}" for i, c in enumerate(df.columns)}
    renamed = df.select(*(F.col(f"`{c}`").alias(ref) for c, ref in columns.items()))
    widths = _widths(df, {f for _, feats in compiled for f in feats})
    scoring = []
    for model, features in compiled:
        cols = tuple(Column(columns[f], f, _kind(df, f), widths[f]) for f in features)
        check_feature_count(model, sum(c.width for c in cols), ", ".join(features))
        scoring.append(
            ScoringModel(
                model.name, model.version, model.kernel, model.output == "predict_proba", cols
            )
        )
    for column in id_columns:
        _require(df, column, "id column")
    ids = tuple(IdField(columns[c], c) for c in id_columns)
    threads = int(df.sparkSession.conf.get("spark.task.cpus", "1") or 1)
    run_id = f"adhoc-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    task = ScoringTask(
        tuple(scoring), ids, layout, run_id, datetime.now(UTC).replace(microsecond=0), threads
    )
    return renamed.mapInArrow(task, _schema(df, id_columns, [m for m, _ in compiled], layout))


def _compile(index: int, entry: Mapping[str, Any]) -> tuple[CompiledModel, list[str]]:
    unknown = set(entry) - _KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise SpecError(f"models[{index}]: unknown key '{key}'.{did_you_mean(key, _KEYS)}")
    for key in ("name", "model", "features"):
        if key not in entry:
            raise SpecError(f"models[{index}]: missing key '{key}'.")
    name, model, output = str(entry["name"]), entry["model"], entry.get("output")
    version, strategy = entry.get("version"), entry.get("strategy")
    if isinstance(model, str):
        compiled = compile_from_spec(
            name, model, entry.get("sha256"), output, version, strategy=strategy
        )
    else:
        compiled = compile_from_object(
            name, model, output=output, version=version, strategy=strategy
        )
    return compiled, [str(f) for f in entry["features"]]


def _require(df: DataFrame, column: str, what: str) -> None:
    if column not in df.columns:
        raise SpecError(
            f"Unknown {what} '{column}': the DataFrame has no such column."
            f"{did_you_mean(column, df.columns)}"
        )


def _kind(df: DataFrame, column: str) -> str:
    _require(df, column, "feature")
    field = df.schema[column]
    dtype = field.dataType
    if type(dtype).__name__ == "VectorUDT":
        return "vector"
    kind = column_kind(to_arrow_type(dtype))
    if kind is None:
        raise DataError(
            f"Feature '{column}' is a {dtype.simpleString()} column; "
            "models read numbers, arrays or vectors."
        )
    return kind


def _widths(df: DataFrame, features: set[str]) -> dict[str, int]:
    """Scalars are 1 wide; arrays and vectors are measured on the first non-null row."""
    widths = {}
    for feature in sorted(features):
        kind = _kind(df, feature)
        if kind == "scalar":
            widths[feature] = 1
            continue
        row = df.where(F.col(f"`{feature}`").isNotNull()).select(feature).first()
        if row is None:
            raise DataError(f"Feature '{feature}' has no non-null value to tell its width.")
        value = row[0]
        widths[feature] = int(value.size) if kind == "vector" else len(value)
    return widths


def _schema(
    df: DataFrame, ids: Sequence[str], models: Sequence[CompiledModel], layout: str
) -> T.StructType:
    id_fields = [T.StructField(c, df.schema[c].dataType, True) for c in ids]
    pred = [
        T.StructField("prediction", T.DoubleType()),
        T.StructField("label", T.StringType()),
        T.StructField("probability", T.ArrayType(T.DoubleType())),
    ]
    tail = [T.StructField("run_id", T.StringType()), T.StructField("scored_at", T.TimestampType())]
    if layout == "long":
        head = [
            T.StructField("model", T.StringType()),
            T.StructField("model_version", T.StringType()),
        ]
        return T.StructType([*id_fields, *head, *pred, *tail])
    fields = list(id_fields)
    for model in models:
        fields += [T.StructField(f"{model.name}__{f.name}", f.dataType) for f in pred]
    return T.StructType([*fields, *tail])
