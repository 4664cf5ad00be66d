"""Champions, shadows and canaries: which model's prediction each row's consumers should use.

Every model of a job is scored on every row, in the same pass (challengers that share inputs
with their champion are batched with it by the planner). What differs is `served`:

- a shadow serves no row;
- a canary serves the rows whose bucket falls in its range: a stable hash (Spark's xxhash64) of
  the job's name and the row's id columns, reduced to [0, 1). Canaries of one champion take
  consecutive ranges from 0 in spec order (the first [0, share_1), the next [share_1, share_1 +
  share_2), ...), so a rerun, another partitioning or another cluster picks the same rows, and
  raising a canary's share keeps every row it served (the ranges of the canaries listed before
  it unchanged);
- a champion serves every row its canaries do not.

So each input row has exactly one served prediction per champion and its challengers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from batchscore.spec.model import JobSpec

if TYPE_CHECKING:
    from pyspark.sql import Column

BUCKET = "__batchscore_bucket"
BUCKETS = 1_000_000_000
"""Buckets of the hash: a share is honoured to 1e-9."""
ALWAYS: tuple[float, float] = (0.0, 1.0)
NEVER: tuple[float, float] = (1.0, 1.0)


def serving_ranges(spec: JobSpec) -> dict[str, tuple[float, float]]:
    """Per model, the bucket range [low, high) of the rows it serves."""
    ranges: dict[str, tuple[float, float]] = {}
    taken: dict[str, float] = {}
    for model in spec.models:
        if model.role == "canary":
            start = taken.get(model.champion, 0.0)
            end = min(1.0, start + float(model.share or 0.0))
            ranges[model.name] = (start, end)
            taken[model.champion] = end
        elif model.role == "shadow":
            ranges[model.name] = NEVER
    for model in spec.models:
        if model.role == "champion":
            ranges[model.name] = (taken.get(model.name, 0.0), 1.0)
    return ranges


def has_canaries(spec: JobSpec) -> bool:
    return any(m.role == "canary" for m in spec.models)


def has_challengers(spec: JobSpec) -> bool:
    return any(m.role != "champion" for m in spec.models)


def bucket_column(job: str, id_refs: Sequence[str]) -> Column:
    """The Spark column of each row's bucket (an integer in [0, BUCKETS))."""
    from pyspark.sql import functions as F

    hashed = F.xxhash64(F.lit(job), *(F.col(f"`{ref}`") for ref in id_refs))
    return F.pmod(hashed, F.lit(BUCKETS)).cast("long").alias(BUCKET)


def served_mask(serves: tuple[float, float], batch: pa.RecordBatch) -> np.ndarray:
    """True where the model serves the row."""
    n = batch.num_rows
    low, high = serves
    if (low, high) == ALWAYS:
        return np.ones(n, dtype=bool)
    if low >= high:
        return np.zeros(n, dtype=bool)
    index = batch.schema.get_field_index(BUCKET)
    buckets = np.asarray(batch.column(index).to_numpy(zero_copy_only=False), dtype=np.int64)
    unit = buckets / BUCKETS
    return np.asarray((unit >= low) & (unit < high))
