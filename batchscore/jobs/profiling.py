"""`batchscore profile`: training profiles, made by Spark in one pass over the data.

Two sources, one format (monitor.profile):

- a spec and a reference run date: every model's inputs exactly as the job assembles them
  (joins included), and its predictions, from the naive plan (no rule rewrites the inputs
  away); each task profiles its rows with the same accumulators the scoring pass uses for
  monitoring, plus a quantile sketch per input;
- a flat training table (Delta or Parquet) and a list of columns.

Each task returns its accumulators as one small JSON row; the driver merges them (sketches and
moments are mergeable), so no row ever reaches the driver and memory stays bounded whatever the
table's size.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batchscore.errors import DataError, SpecError, did_you_mean
from batchscore.monitor.flat_tables import profile_batches
from batchscore.monitor.health import model_inputs
from batchscore.monitor.profile import Profile
from batchscore.physical.lower import scoring_input, scoring_task
from batchscore.physical.monitoring import RunMonitor, merge_bodies, monitored_model
from batchscore.physical.score import ScoringTask, limit_threads
from batchscore.plan import bind, optimize
from batchscore.spec.load import with_run_date
from batchscore.spec.model import JobSpec

BODY = "body"


@dataclass(frozen=True)
class ProfileTask:
    """Scores each batch (for the predictions' profile) and profiles inputs and outputs;
    yields one row: the task's accumulators as JSON."""

    scoring: ScoringTask
    monitor: RunMonitor

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        limit_threads(self.scoring.threads)
        tally = self.monitor.start()
        for raw in batches:
            if raw.num_rows:
                batch, cache = self.scoring.joined(raw, thin=False)
                self.scoring.score(raw, batch, cache, watch=tally)
        yield pa.RecordBatch.from_pydict({BODY: [json.dumps(tally.body())]})


def profile_spec(
    spark: SparkSession,
    spec: JobSpec,
    *,
    run_date: str | None,
    model: str | None = None,
) -> dict[str, Profile]:
    """Per model of the spec (or only `model`), the profile of a run on `run_date`."""
    spec = with_run_date(spec, run_date)
    plan = optimize(bind(spec), ())  # naive: every input as the materialized join has it
    names = [b.name for b in plan.models]
    if model is not None and model not in names:
        raise SpecError(
            f"Spec {spec.spec_path or '<spec>'} has no model '{model}'.{did_you_mean(model, names)}"
        )
    bindings = [b for b in plan.models if model is None or b.name == model]
    monitor = RunMonitor(
        tuple(
            monitored_model(b.name, model_inputs(b), None, b.model.kernel.classes) for b in bindings
        ),
        folder="",
        sketch=True,
    )
    task = scoring_task(spark, plan, run_id="profile", scored_at=datetime.now(UTC))
    task = replace(
        task,
        groups=(),
        models=tuple(m for m in task.models if m.name in {b.name for b in bindings}),
    )
    joined = scoring_input(spark, plan)
    bodies = _collect(joined, ProfileTask(task, monitor))
    where = f"spec {spec.spec_path or spec.name}" + (
        f" run date {spec.run_date}" if spec.run_date else ""
    )
    return merge_bodies(monitor, bodies, source=where, created_at=_now())


def profile_data(
    spark: SparkSession, path: str, features: Sequence[str], *, table_format: str | None = None
) -> Profile:
    """The profile of `features` of a flat table (Delta or Parquet folder)."""
    df = _read(spark, path, table_format)
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise DataError(
            f"Training table {path} has no column '{missing[0]}'."
            f"{did_you_mean(missing[0], df.columns)} Columns: {', '.join(df.columns[:20])}."
        )
    return profile_frame(df, features, source=f"table {path}")


def profile_frame(df: DataFrame, features: Sequence[str] = (), *, source: str) -> Profile:
    """The profile of `features` (default: every column) of any DataFrame, in one pass: each
    task profiles its batches and returns one JSON row; the driver merges them."""
    chosen = list(features) or list(df.columns)
    bodies = [
        row[BODY]
        for row in df.select(*(F.col(f"`{c}`") for c in chosen))
        .mapInArrow(_FlatTask(tuple(chosen), source), f"{BODY} string")
        .collect()
    ]
    merged: Profile | None = None
    for body in bodies:
        part = Profile.from_json(json.loads(body))
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise DataError(f"Training data {source} has no rows to profile.")
    return replace(merged, source=source, created_at=_now())


@dataclass(frozen=True)
class _FlatTask:
    features: tuple[str, ...]
    source: str

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        stream = iter(batches)
        first = next(stream, None)
        if first is None:
            return
        profile = profile_batches(
            first.schema, itertools.chain([first], stream), self.features, source=self.source
        )
        if profile.rows:
            yield pa.RecordBatch.from_pydict({BODY: [json.dumps(profile.to_json())]})


def _read(spark: SparkSession, path: str, table_format: str | None) -> DataFrame:
    from batchscore.physical.native_scan import spark_can_open
    from batchscore.sinks.spark_io import read_delta, read_parquet_folder
    from batchscore.sinks.storage import is_delta_table, is_object_store

    if not is_object_store(path) and not Path(path).exists():
        raise DataError(
            f"Training table {path} does not exist; give a Delta table or a Parquet folder."
        )
    delta = table_format == "delta" or (table_format is None and is_delta_table(path))
    if delta:
        return read_delta(spark, path)
    return (
        spark.read.parquet(path)
        if spark_can_open(spark, path)
        else read_parquet_folder(spark, path)
    )


def _collect(joined: DataFrame, task: ProfileTask) -> list[str]:
    return [row[BODY] for row in joined.mapInArrow(task, f"{BODY} string").collect()]


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()
