"""Champion vs challenger, measured in the scoring pass (physical.monitoring carries it).

Both models score every row, so each batch gives paired outputs: per (challenger, champion),
the rows where both predictions are finite with the mean and largest |difference|, the rows
where both have a label with how many agree (a flipped decision is a disagreement: a binary
classifier's label is its decision at the 0.5 threshold), and per model the rows it served.
Sums and maxima merge across tasks exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from batchscore.kernels.base import ScoreOutput
from batchscore.physical.roles import served_mask


@dataclass(frozen=True)
class Pairing:
    """Which pairs to compare, and each model's serving range (physical.roles)."""

    pairs: tuple[tuple[str, str], ...]
    """(challenger, champion) names."""
    serves: tuple[tuple[str, tuple[float, float]], ...]


@dataclass
class ComparisonTally:
    pairing: Pairing
    pairs: dict[str, dict[str, float]] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)

    def observe(self, batch: pa.RecordBatch, outputs: Mapping[str, ScoreOutput]) -> None:
        for name, serves in self.pairing.serves:
            if name in outputs:
                count = int(served_mask(serves, batch).sum())
                self.served[name] = self.served.get(name, 0) + count
        for challenger, champion in self.pairing.pairs:
            if challenger in outputs and champion in outputs:
                self._pair(f"{challenger}|{champion}", outputs[challenger], outputs[champion])

    def _pair(self, key: str, new: ScoreOutput, old: ScoreOutput) -> None:
        sums = self.pairs.setdefault(key, dict.fromkeys(_SUMS, 0.0))
        a = np.asarray(new.prediction, dtype=np.float64)
        b = np.asarray(old.prediction, dtype=np.float64)
        both = np.isfinite(a) & np.isfinite(b)
        if both.any():
            diff = np.abs(a[both] - b[both])
            sums["scored"] += int(both.sum())
            sums["abs_diff"] += float(diff.sum())
            sums["max_abs_diff"] = max(sums["max_abs_diff"], float(diff.max()))
        if new.has_label and old.has_label:
            labelled, agree = _agreement(new, old)
            sums["labelled"] += labelled
            sums["agree"] += agree

    def body(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "served": self.served}


_SUMS = ("scored", "abs_diff", "max_abs_diff", "labelled", "agree")


def _agreement(new: ScoreOutput, old: ScoreOutput) -> tuple[int, int]:
    """Rows where both have a label, and how many of those agree. From the class codes when
    both kernels give them (no string per row: this runs on every batch of the pass)."""
    if new.codes is None or old.codes is None or new.classes is None or old.classes is None:
        left, right = _labels(new), _labels(old)
        known = (left != None) & (right != None)  # noqa: E711 - elementwise on object arrays
        return int(known.sum()), int((left[known] == right[known]).sum())
    moved = _class_map(new.classes, old.classes)
    a, b = np.asarray(new.codes), np.asarray(old.codes)
    known = (a >= 0) & (b >= 0)
    return int(known.sum()), int((moved[a[known]] == b[known]).sum())


@functools.lru_cache(maxsize=64)
def _class_map(new: tuple[str, ...], old: tuple[str, ...]) -> np.ndarray:
    """The challenger's class codes in the champion's class order (built once per pair of class
    tuples, not per batch); -2, never a code, for a class the champion does not have."""
    at = {name: i for i, name in enumerate(old)}
    moved = np.asarray([at.get(name, -2) for name in new], dtype=np.int64)
    moved.flags.writeable = False
    return moved


def _labels(out: ScoreOutput) -> np.ndarray:
    if out.codes is not None and out.classes is not None:
        codes = np.asarray(out.codes)
        names = np.asarray(list(out.classes), dtype=object)
        return np.asarray(np.where(codes >= 0, names[np.clip(codes, 0, None)], None), dtype=object)
    return np.asarray(out.label, dtype=object)


def merge_comparisons(bodies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The tasks' tallies added up (maxima by max)."""
    pairs: dict[str, dict[str, float]] = {}
    served: dict[str, int] = {}
    for body in bodies:
        part = body.get("comparison") or {}
        for key, sums in (part.get("pairs") or {}).items():
            mine = pairs.setdefault(key, dict.fromkeys(_SUMS, 0.0))
            for name, value in sums.items():
                if name == "max_abs_diff":
                    mine[name] = max(mine[name], float(value))
                else:
                    mine[name] += float(value)
        for name, count in (part.get("served") or {}).items():
            served[name] = served.get(name, 0) + int(count)
    return {"pairs": pairs, "served": served}
