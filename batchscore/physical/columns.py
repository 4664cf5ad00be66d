"""Arrow columns of the output: a kernel's numpy results turned into the contract's types.

With many models per job this runs k times per batch, so every builder avoids per-row Python
objects and leaves out validity bitmaps where no row is null (Arrow and the Parquet writer then
skip the null checks): on the 32-model benchmark these columns cost more than the matrix
product did.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

import numpy as np
import pyarrow as pa

from batchscore.kernels.base import ScoreOutput

PROBABILITY = pa.list_(pa.float64())
TIMESTAMP = pa.timestamp("us", tz="UTC")
SHORT_LABEL_BYTES = 32
"""Classes of one length up to this are gathered as a byte matrix; others with Arrow's take."""


def prediction_columns(out: ScoreOutput, n: int, classes: tuple[str, ...] | None) -> list[pa.Array]:
    """prediction, label, probability of one model for one batch of n rows."""
    prediction = np.asarray(out.prediction, dtype=np.float64)
    predictions = pa.array(prediction, pa.float64(), mask=_mask(~np.isfinite(prediction)))
    return [predictions, labels(out, n, classes), probabilities(out.probability, n)]


def _mask(missing: np.ndarray) -> np.ndarray | None:
    return missing if missing.any() else None


def labels(out: ScoreOutput, n: int, classes: tuple[str, ...] | None) -> pa.Array:
    """The label column: gathered from class codes where the kernel gave them, else
    converted from the label strings."""
    if not out.has_label:
        return pa.nulls(n, pa.string())
    if out.codes is None or classes is None:
        return pa.array(out.label, pa.string())
    codes = np.asarray(out.codes, dtype=np.int64)
    unknown = _mask(codes < 0)
    if unknown is not None:
        codes = np.where(unknown, 0, codes)
    table = _class_bytes(classes)
    if table is None or n * table.shape[1] >= 2**31:
        return pa.array(classes, pa.string()).take(pa.array(codes, pa.int64(), mask=unknown))
    return _gather_strings(table, codes, unknown)


@lru_cache(maxsize=256)
def _class_bytes(classes: tuple[str, ...]) -> np.ndarray | None:
    """(classes x length) UTF-8 bytes when every class is as long and short; else None
    (Arrow's take is then as fast as any gather numpy can do)."""
    encoded = [c.encode() for c in classes]
    width = len(encoded[0]) if encoded else 0
    if not 0 < width <= SHORT_LABEL_BYTES or any(len(e) != width for e in encoded):
        return None
    table = np.frombuffer(b"".join(encoded), dtype=np.uint8).reshape(len(encoded), width)
    return table


def _gather_strings(table: np.ndarray, codes: np.ndarray, unknown: np.ndarray | None) -> pa.Array:
    """A string array of classes[codes] built from its buffers: rows of the byte table, fixed
    offsets; a null row keeps its bytes but is marked invalid."""
    n, width = len(codes), table.shape[1]
    data = table[codes].reshape(-1)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    validity = None
    if unknown is not None:
        validity = pa.py_buffer(np.packbits(~unknown, bitorder="little"))
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data), validity)


def probabilities(probability: np.ndarray | None, n: int) -> pa.Array:
    """array<double> per row; null where the row holds a NaN or inf (an undefined score)."""
    if probability is None:
        return pa.nulls(n, PROBABILITY)
    probability = np.ascontiguousarray(probability, dtype=np.float64)
    width = probability.shape[1]
    values = pa.array(probability.reshape(-1), pa.float64())
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    missing = _mask(_nan_rows(probability))
    return pa.ListArray.from_arrays(
        offsets, values, type=PROBABILITY, mask=None if missing is None else pa.array(missing)
    )


def _nan_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows holding a NaN or an infinity (no probability). Column by column for few columns:
    numpy's any(axis=1) over a narrow row is several times slower than a few vectorized ors."""
    if not 0 < matrix.shape[1] <= 8:
        return np.asarray(~np.isfinite(matrix).all(axis=1))
    rows: np.ndarray = ~np.isfinite(matrix[:, 0])
    for column in range(1, matrix.shape[1]):
        rows |= ~np.isfinite(matrix[:, column])
    return rows


def constant_strings(text: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(text, pa.string()), n)


def timestamps(when: datetime, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(when, TIMESTAMP), n)
