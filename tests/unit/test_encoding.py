"""Per-column Parquet encodings of written files, and label columns built from class codes."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.kernels.base import ScoreOutput, classifier_output
from batchscore.physical.columns import SHORT_LABEL_BYTES, labels, probabilities
from batchscore.sinks.encoding import choose_encoding


def _outputs(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    p = rng.random(n)
    probability = np.stack([1 - p, p], axis=1).reshape(-1)
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "store": rng.integers(0, 5, n),
            "m__prediction": p,
            "m__label": np.where(p > 0.5, "yes", "no"),
            "m__probability": pa.ListArray.from_arrays(
                pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), pa.array(probability)
            ),
            "tree__prediction": rng.choice([0.25, 0.5, 1.5], n),
            "run_id": ["r1"] * n,
            "few": pa.array([1.0, None] + [None] * (n - 2), pa.float64()),
        }
    )


def test_continuous_columns_skip_the_dictionary_and_floats_skip_compression() -> None:
    encoding = choose_encoding(_outputs(20_000))
    assert set(encoding.use_dictionary) == {
        "store",
        "m__label",
        "tree__prediction",
        "run_id",
        "few",
    }
    none = {name for name, codec in encoding.compression.items() if codec == "none"}
    assert none == {"m__prediction", "m__probability"}


def test_files_written_with_the_choice_read_back_identical() -> None:
    table = _outputs(20_000)
    encoding = choose_encoding(table)
    buffer = io.BytesIO()
    pq.write_table(
        table, buffer, use_dictionary=encoding.use_dictionary, compression=encoding.compression
    )
    back = pq.read_table(io.BytesIO(buffer.getvalue()))
    assert back.equals(table)
    meta = pq.read_metadata(io.BytesIO(buffer.getvalue())).row_group(0)
    chunks = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert chunks["m__prediction"].compression == "UNCOMPRESSED"
    assert "RLE_DICTIONARY" not in chunks["m__prediction"].encodings
    assert chunks["m__probability.list.element"].compression == "UNCOMPRESSED"
    assert "RLE_DICTIONARY" in chunks["m__label"].encodings
    assert chunks["id"].compression == "SNAPPY"


@pytest.mark.parametrize(
    "classes",
    [
        ("b", "a", "c"),
        ("no", "yes", "maybe", ""),
        ("café", "日本", "x"),
        ("short", "l" * (SHORT_LABEL_BYTES + 5)),
    ],
)
@pytest.mark.parametrize("with_nulls", [False, True])
def test_labels_from_codes_equal_labels_from_strings(
    classes: tuple[str, ...], with_nulls: bool
) -> None:
    probability = np.random.default_rng(1).random((500, len(classes)))
    if with_nulls:
        probability[::7] = np.nan
    out = classifier_output(probability, classes, proba=True)
    from_codes = labels(out, 500, classes)
    from_strings = labels(ScoreOutput(out.prediction, out.label, out.probability), 500, classes)
    from_codes.validate(full=True)
    assert from_codes.equals(from_strings)
    assert from_codes.null_count == (len(range(0, 500, 7)) if with_nulls else 0)
    assert from_codes.to_pylist()[1] == classes[int(np.argmax(probability[1]))]
    rows = probabilities(out.probability, 500)
    rows.validate(full=True)
    assert rows.null_count == from_codes.null_count
    assert rows.to_pylist()[1] == probability[1].tolist()
