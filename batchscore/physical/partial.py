"""Dimension-side partial scores, computed on executors once per dimension row.

For every affine model that reads this dimension, `X_t @ W_t` (W_t: the model's weight rows of
the dimension's inputs, identity rows for partials of its own dimensions) becomes one
array<double> column of the model's decision width. The fact side adds it back exactly as it
would have added `x_t · W_t`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from batchscore.physical.assemble import Block, Column, assemble

PARTIAL = pa.list_(pa.float64())


@dataclass(frozen=True)
class PartialSpec:
    """One model's partial: its input columns (in weight-row order), weights and output name."""

    columns: tuple[Column, ...]
    weights: np.ndarray
    output: str


@dataclass(frozen=True)
class PartialTask:
    partials: tuple[PartialSpec, ...]
    keep: tuple[str, ...]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            cache: dict[str, Block] = {}
            arrays = [batch.column(batch.schema.get_field_index(name)) for name in self.keep]
            for partial in self.partials:
                matrix = assemble(batch, partial.columns, cache)
                values = np.asarray(matrix @ partial.weights, dtype=np.float64)
                arrays.append(_lists(values))
            names = [*self.keep, *(p.output for p in self.partials)]
            yield pa.RecordBatch.from_arrays(arrays, names=names)


def _lists(values: np.ndarray) -> pa.Array:
    n, width = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(
        offsets, pa.array(values.reshape(-1), pa.float64()), type=PARTIAL
    )
