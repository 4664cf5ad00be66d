"""Champion vs challenger tallies (physical.comparison): label agreement counted from class
codes matches the count over label strings, whatever the two models' class orders."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from batchscore.kernels.base import ScoreOutput
from batchscore.physical.comparison import ComparisonTally, Pairing

RNG = np.random.default_rng(11)


def _output(codes: np.ndarray, classes: tuple[str, ...], *, strings: bool) -> ScoreOutput:
    prediction = RNG.random(len(codes))
    if strings:  # a kernel that gives labels only
        names = np.asarray(list(classes), dtype=object)
        label = np.where(codes >= 0, names[np.clip(codes, 0, None)], None).astype(object)
        return ScoreOutput(prediction, label, None)
    return ScoreOutput(prediction, None, None, codes, classes)


def _tally(new: ScoreOutput, old: ScoreOutput) -> dict[str, float]:
    tally = ComparisonTally(Pairing((("new", "old"),), ()))
    tally.observe(
        pa.RecordBatch.from_pydict({"id": list(range(len(new.prediction)))}),
        {
            "new": new,
            "old": old,
        },
    )
    return tally.pairs["new|old"]


def test_agreement_from_codes_equals_agreement_from_labels() -> None:
    n = 2_000
    old_classes = ("a", "b", "c")
    new_classes = ("c", "a", "d", "b")  # another order, and a class the champion lacks
    old_codes = RNG.integers(-1, 3, n)  # -1: no label
    new_codes = RNG.integers(-1, 4, n)
    from_codes = _tally(
        _output(new_codes, new_classes, strings=False),
        _output(old_codes, old_classes, strings=False),
    )
    from_labels = _tally(
        _output(new_codes, new_classes, strings=True),
        _output(old_codes, old_classes, strings=True),
    )
    new_names = np.asarray(new_classes)[np.clip(new_codes, 0, None)]
    old_names = np.asarray(old_classes)[np.clip(old_codes, 0, None)]
    known = (new_codes >= 0) & (old_codes >= 0)
    assert from_codes["labelled"] == from_labels["labelled"] == known.sum()
    assert from_codes["agree"] == from_labels["agree"] == (new_names == old_names)[known].sum()
    assert 0 < from_codes["agree"] < from_codes["labelled"]
