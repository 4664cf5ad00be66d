"""Dimension-side partial scores, computed on executors once per dimension row.

For every affine model that reads this dimension, `X_t @ W_t` (W_t: the model's weight rows of
the dimension's inputs, identity rows for partials of its own dimensions) becomes one
array<double> column of the model's decision width. The fact side adds it back exactly as it
would have added `x_t · W_t`. A tree ensemble's partial gives its leaf words and collapsed leaf
sums (kernels.trees.factorized), also as array<double> columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from batchscore.kernels.base import Matrix
from batchscore.physical.assemble import Block, Column, assemble

PARTIAL = pa.list_(pa.float64())


@dataclass(frozen=True)
class AffineShare:
    """An affine model's partial: the dimension's inputs times their weight rows."""

    weights: np.ndarray

    def __call__(self, X: Matrix) -> list[np.ndarray]:
        return [np.asarray(X @ self.weights, dtype=np.float64)]


@dataclass(frozen=True)
class PartialSpec:
    """One model's partial: its input columns (in its row order), how to compute its output
    arrays from them (AffineShare, or kernels.trees.factorized.TablePartial), and their names."""

    columns: tuple[Column, ...]
    compute: Callable[[Matrix], list[np.ndarray]]
    outputs: tuple[str, ...]


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
                values = partial.compute(matrix)
                arrays.extend(_lists(v) for v in values)
            names = [*self.keep, *(name for p in self.partials for name in p.outputs)]
            yield pa.RecordBatch.from_arrays(arrays, names=names)


def _lists(values: np.ndarray) -> pa.Array:
    n, width = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(
        offsets, pa.array(values.reshape(-1), pa.float64()), type=PARTIAL
    )
