"""No silent nulls: per model, the rows written with a null prediction, and why.

Counted on executors inside the scoring task (physical.score), per batch and only when a model
gave a null row (the check itself is one `isfinite` over the output). Each row gets the first
reason that applies, in this order:

- `missing dimension row`: a joined table the model reads had no row for the fact row (its key
  found nothing, or was null): the left join's present flag is null;
- `unseen category`: a one-hot stage fitted with handle_unknown='error' refused the row;
- `null in <feature>` / `NaN/inf in <feature>`: the first of the model's features (spec order,
  by label, e.g. `stores.size_sqm`) whose value is null, or NaN/inf;
- `non-finite model output`: none of the above (e.g. an overflow inside the model).

Like `physical.profile`, each task writes its totals as one small JSON file under
`<table>/_batchscore/nulls/<run id>/`, named by the task's partition so a retried attempt
replaces its predecessor's file instead of adding to it; the driver adds them up after the
commit and deletes the folder (a killed run's leftovers count as batchscore's own files, see
sinks.ownership).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from batchscore.kernels.base import Kernel, ScoreOutput
from batchscore.physical.assemble import Block, Column, assemble
from batchscore.physical.task_files import (
    read_task_files,
    remove_task_files,
    task_dir,
    task_name,
    write_task_file,
)

MISSING_ROW = "missing dimension row"
UNSEEN_CATEGORY = "unseen category"
MODEL_OUTPUT = "non-finite model output"
NullCounts = dict[str, dict[str, int]]
"""model -> reason -> rows."""


class CountedModel(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def kernel(self) -> Kernel: ...
    @property
    def columns(self) -> tuple[Column, ...]: ...
    @property
    def present(self) -> tuple[str, ...]: ...


def null_dir(table_path: str, run_id: str) -> str:
    return task_dir(table_path, "nulls", run_id)


def null_rows(out: ScoreOutput) -> np.ndarray:
    """The rows whose output the writer stores as null (physical.columns): the probability
    for a classifier scored with predict_proba, the label for `output: predict` on a
    classifier, else the prediction."""
    if out.probability is not None:
        probability = np.asarray(out.probability, dtype=np.float64)
        return np.asarray(~np.isfinite(probability).all(axis=1))
    if out.has_label:
        if out.codes is not None:
            return np.asarray(out.codes) < 0
        label = out.label
        assert label is not None
        return np.asarray([v is None for v in label], dtype=bool)
    return np.asarray(~np.isfinite(np.asarray(out.prediction, dtype=np.float64)))


@dataclass
class NullTally:
    """One task's counts."""

    counts: NullCounts = field(default_factory=dict)

    def add(self, model: str, reasons: Mapping[str, int]) -> None:
        mine = self.counts.setdefault(model, {})
        for reason, n in reasons.items():
            if n:
                mine[reason] = mine.get(reason, 0) + int(n)

    def dump(self, folder: str) -> None:
        """One JSON file per task partition; nothing when no row was null."""
        if not any(self.counts.values()):
            return
        write_task_file(folder, task_name(), {"nulls": self.counts})


def count_reasons(
    batch: pa.RecordBatch,
    model: CountedModel,
    null: np.ndarray,
    cache: dict[str, Block],
) -> dict[str, int]:
    """Why each of the `null` rows of `batch` is null, counted by reason (first reason wins)."""
    remaining = np.array(null, dtype=bool)
    counts: dict[str, int] = {}

    def take(reason: str, rows: np.ndarray) -> None:
        hit = remaining & rows
        n = int(hit.sum())
        if n:
            counts[reason] = counts.get(reason, 0) + n
            remaining[hit] = False

    missing = np.zeros(len(remaining), dtype=bool)
    for flag in model.present:
        index = batch.schema.get_field_index(flag)
        if index >= 0:
            missing |= _is_null(batch.column(index))
    take(MISSING_ROW, missing)
    if remaining.any():
        take(UNSEEN_CATEGORY, _unseen(batch, model, remaining, cache))
    for column in model.columns:
        if not remaining.any():
            break
        take(f"null in {column.label}", _is_null(batch.column(column.ref)))
        block = assemble(batch, (column,), cache)
        take(f"NaN/inf in {column.label}", _non_finite_rows(block))
    if remaining.any():
        take(MODEL_OUTPUT, remaining.copy())
    return counts


def _unseen(
    batch: pa.RecordBatch, model: CountedModel, rows: np.ndarray, cache: dict[str, Block]
) -> np.ndarray:
    from batchscore.kernels.affine import TransformedKernel

    out = np.zeros(len(rows), dtype=bool)
    kernel = model.kernel
    if not isinstance(kernel, TransformedKernel) or not kernel.stage.categories():
        return out
    matrix = assemble(batch, model.columns, cache)
    index = np.flatnonzero(rows)
    with np.errstate(all="ignore"):
        _, bad = kernel.transform(matrix[index])
    out[index[np.asarray(bad, dtype=bool)]] = True
    return out


def _is_null(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _non_finite_rows(block: Block) -> np.ndarray:
    if sp.issparse(block):
        csr = sp.csr_matrix(block)
        rows = np.zeros(csr.shape[0], dtype=bool)
        owner = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        rows[owner[~np.isfinite(csr.data)]] = True
        return rows
    dense = np.asarray(block)
    return np.asarray(~np.isfinite(dense.reshape(dense.shape[0], -1)).all(axis=1))


def collect_nulls(folder: str) -> NullCounts:
    """Add up the tasks' files under `folder`, then delete it ({} when no task wrote one)."""
    total = NullTally()
    for body in read_task_files(folder):
        for model, reasons in (body.get("nulls") or {}).items():
            total.add(str(model), {str(k): int(v) for k, v in reasons.items()})
    discard(folder)
    return {m: dict(sorted(r.items(), key=lambda kv: -kv[1])) for m, r in total.counts.items()}


def discard(folder: str) -> None:
    remove_task_files(folder)


def flags_of(tables: Sequence[str], flag_of: Mapping[str, str]) -> tuple[str, ...]:
    """The present flags of the joined tables among `tables` (the model's feature tables)."""
    return tuple(flag_of[t] for t in dict.fromkeys(tables) if t in flag_of)
