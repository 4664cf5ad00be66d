"""Model evaluation once the true labels arrive: metrics and the paired bootstrap (pure numpy).

`batchscore evaluate` (jobs/evaluate.py) joins a run's predictions with a labels table on
Spark and hands each group of rows to these functions, inside the task; nothing here imports
pyspark or pandas.

Every metric takes optional sample weights, which is how the bootstrap resamples: a resample
is a vector of counts (how often each row was drawn), so a metric over a resample is a weighted
metric over the same rows. Rows are never copied and AUC sorts once, not once per resample.

Definitions (equal to scikit-learn's on the same rows, to 1e-9; tests/unit/test_evaluation.py):

- `auc`: binary: the Mann-Whitney form of `roc_auc_score` (ties count one half) on
  P(classes[1]); multiclass: one-vs-rest, macro average (`multi_class="ovr"`), undefined
  (absent) when a class has no positive or no negative row.
- `log_loss`: natural log; probabilities clipped to [eps, 1 - eps] with eps the float64
  machine epsilon, as `sklearn.metrics.log_loss` does (no renormalization).
- `accuracy`: the predicted label (the `label` column) equals the true one.
- `brier`: binary: mean (P(classes[1]) - y)^2 (`brier_score_loss`); multiclass: the sum over
  classes, unscaled (`brier_score_loss(..., labels=classes)`, range [0, 2]).
- `ece`: binary only: expected calibration error over 10 equal-width bins of P(classes[1])
  (the last bin includes 1.0): sum over bins of (rows in bin / rows) x |mean y - mean p|.
- `rmse`, `mae`, `r2`: regressors; r2 of constant labels is 1.0 for a perfect fit, else 0.0
  (scikit-learn's `force_finite`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EPS = float(np.finfo(np.float64).eps)
ECE_BINS = 10
RESAMPLES = 200
SEED = 20_261_121
CONFIDENCE = 0.95

CLASSIFIER_METRICS = ("auc", "log_loss", "accuracy", "brier", "ece")
REGRESSOR_METRICS = ("rmse", "mae", "r2")
HIGHER_IS_BETTER = frozenset({"auc", "accuracy", "r2"})
MAIN_METRIC = {"classifier": "auc", "regressor": "rmse"}
"""The metric a challenger's verdict is decided on."""

BETTER, WORSE, SAME, UNKNOWN = "better", "worse", "no difference", "undetermined"


# --------------------------------------------------------------------------------------------
# labels against a model's classes


def class_codes(values: Sequence[object], classes: Sequence[str]) -> np.ndarray:
    """int64 index into `classes` of each label value, -1 for a null or a value that is not
    a class. Values compare as strings: exactly, else case-insensitively (a boolean label
    read as 'true' against the class 'True'), else as numbers (1 against '1.0')."""
    exact = {c: i for i, c in enumerate(classes)}
    folded: dict[str, int] = {}
    numeric: dict[float, int] = {}
    for i, c in enumerate(classes):
        folded.setdefault(c.lower(), i)
        number = _number(c)
        if number is not None:
            numeric.setdefault(number, i)
    found: dict[object, int] = {}
    out = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        code = found.get(value)
        if code is None:
            code = _code(value, exact, folded, numeric)
            found[value] = code
        out[row] = code
    return out


def _code(
    value: object, exact: Mapping[str, int], folded: Mapping[str, int], numeric: Mapping[float, int]
) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -1
    text = str(value)
    if text in exact:
        return exact[text]
    if text.lower() in folded:
        return folded[text.lower()]
    number = _number(text)
    return numeric.get(number, -1) if number is not None else -1


def _number(text: str) -> float | None:
    if text.strip().lower() in ("true", "false", "nan", "inf", "-inf", "infinity"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# metrics


def _weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    return np.asarray(weights, dtype=np.float64)


class SortedAuc:
    """Binary AUC of fixed rows under any weights: sorted once, O(n) per call."""

    def __init__(self, positive: np.ndarray, score: np.ndarray) -> None:
        order = np.argsort(score, kind="mergesort")
        ordered = np.asarray(score, dtype=np.float64)[order]
        self._order = order
        self._positive = np.asarray(positive, dtype=bool)[order]
        change = np.empty(len(ordered), dtype=bool)
        change[:1] = True
        change[1:] = ordered[1:] != ordered[:-1]
        self._group = np.cumsum(change) - 1
        self._groups = int(self._group[-1]) + 1 if len(ordered) else 0

    def __call__(self, weights: np.ndarray | None = None) -> float:
        w = _weights(len(self._order), weights)[self._order]
        pos = np.bincount(self._group, w * self._positive, minlength=self._groups)
        neg = np.bincount(self._group, w * ~self._positive, minlength=self._groups)
        total_pos, total_neg = float(pos.sum()), float(neg.sum())
        if total_pos <= 0 or total_neg <= 0:
            return math.nan
        below = np.cumsum(neg) - neg
        return float(np.sum(pos * (below + 0.5 * neg)) / (total_pos * total_neg))


def auc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Binary ROC AUC (NaN when the rows hold one class only)."""
    return SortedAuc(positive, score)(weights)


def log_loss(truth: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean negative log probability of the true class (codes into proba's columns)."""
    picked = np.clip(proba[np.arange(len(truth)), truth], EPS, 1.0 - EPS)
    return _mean(-np.log(picked), weights)


def accuracy(truth: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None) -> float:
    return _mean((truth == predicted).astype(np.float64), weights)


def brier(truth: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Binary: mean (p1 - y)^2; multiclass: mean sum over classes (p - onehot)^2."""
    if proba.shape[1] == 2:
        return _mean((proba[:, 1] - (truth == 1)) ** 2, weights)
    onehot = np.zeros_like(proba)
    onehot[np.arange(len(truth)), truth] = 1.0
    return _mean(np.sum((proba - onehot) ** 2, axis=1), weights)


def ece(
    positive: np.ndarray, p1: np.ndarray, weights: np.ndarray | None = None, bins: int = ECE_BINS
) -> float:
    """Expected calibration error of P(positive) over `bins` equal-width bins."""
    w = _weights(len(p1), weights)
    total = float(w.sum())
    if total <= 0:
        return math.nan
    index = np.minimum((np.asarray(p1) * bins).astype(np.int64), bins - 1)
    index = np.maximum(index, 0)
    observed = np.bincount(index, w * positive, minlength=bins)
    expected = np.bincount(index, w * p1, minlength=bins)
    return float(np.sum(np.abs(observed - expected)) / total)


def rmse(y: np.ndarray, yhat: np.ndarray, weights: np.ndarray | None = None) -> float:
    return math.sqrt(_mean((y - yhat) ** 2, weights))


def mae(y: np.ndarray, yhat: np.ndarray, weights: np.ndarray | None = None) -> float:
    return _mean(np.abs(y - yhat), weights)


def r2(y: np.ndarray, yhat: np.ndarray, weights: np.ndarray | None = None) -> float:
    w = _weights(len(y), weights)
    total = float(w.sum())
    if total <= 0:
        return math.nan
    mean = float(np.sum(w * y) / total)
    residual = float(np.sum(w * (y - yhat) ** 2))
    spread = float(np.sum(w * (y - mean) ** 2))
    if spread == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return 1.0 - residual / spread


def _mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    if len(values) == 0:
        return math.nan
    if weights is None:
        return float(np.mean(values))
    total = float(np.sum(weights))
    return float(np.sum(weights * values) / total) if total > 0 else math.nan


# --------------------------------------------------------------------------------------------
# one model's scored, labelled rows


class Scores(Protocol):
    """A model's rows, ready to be measured under any weights (None: each row once)."""

    kind: str
    rows: int

    def metrics(self, weights: np.ndarray | None = None) -> dict[str, float]: ...


class ClassifierScores:
    """truth, predicted: class codes (>= 0); proba: (n, classes) or None (labels only)."""

    kind = "classifier"

    def __init__(self, truth: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None):
        self.truth = np.asarray(truth, dtype=np.int64)
        self.predicted = np.asarray(predicted, dtype=np.int64)
        self.proba = None if proba is None else np.asarray(proba, dtype=np.float64)
        self.rows = len(self.truth)
        self._aucs: list[SortedAuc] = []
        if self.proba is not None and self.rows:
            columns = [1] if self.proba.shape[1] == 2 else range(self.proba.shape[1])
            self._aucs = [SortedAuc(self.truth == c, self.proba[:, c]) for c in columns]

    def metrics(self, weights: np.ndarray | None = None) -> dict[str, float]:
        out = {"accuracy": accuracy(self.truth, self.predicted, weights)}
        if self.proba is None or not self.rows:
            return out
        aucs = [a(weights) for a in self._aucs]
        out["auc"] = math.nan if any(math.isnan(a) for a in aucs) else float(np.mean(aucs))
        out["log_loss"] = log_loss(self.truth, self.proba, weights)
        out["brier"] = brier(self.truth, self.proba, weights)
        if self.proba.shape[1] == 2:
            out["ece"] = ece(self.truth == 1, self.proba[:, 1], weights)
        return out


class RegressorScores:
    kind = "regressor"

    def __init__(self, y: np.ndarray, yhat: np.ndarray) -> None:
        self.y = np.asarray(y, dtype=np.float64)
        self.yhat = np.asarray(yhat, dtype=np.float64)
        self.rows = len(self.y)

    def metrics(self, weights: np.ndarray | None = None) -> dict[str, float]:
        if not self.rows:
            return {}
        return {
            "rmse": rmse(self.y, self.yhat, weights),
            "mae": mae(self.y, self.yhat, weights),
            "r2": r2(self.y, self.yhat, weights),
        }


# --------------------------------------------------------------------------------------------
# champion vs challenger


@dataclass(frozen=True)
class Difference:
    """challenger - champion on the same rows, with its paired bootstrap interval."""

    diff: float
    low: float
    high: float


def paired_bootstrap(
    champion: Scores,
    challenger: Scores,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Difference]:
    """Per metric, challenger - champion on the rows both hold (aligned: row i of one is
    row i of the other), and the percentile interval of that difference over `resamples`
    resamples of the rows with replacement (the same rows for both models: paired).

    Cost: resamples x (metrics of both models), each O(rows) (AUC is sorted once)."""
    if champion.rows != challenger.rows:
        raise ValueError("paired_bootstrap: the two models' rows are not aligned")
    n = champion.rows
    base, other = champion.metrics(), challenger.metrics()
    names = [m for m in base if m in other]
    if n == 0 or not names:
        return {}
    rng = np.random.default_rng(seed)
    draws = np.full((resamples, len(names)), np.nan)
    for r in range(resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        a, b = champion.metrics(counts), challenger.metrics(counts)
        draws[r] = [b[m] - a[m] for m in names]
    tail = (1.0 - confidence) / 2.0 * 100.0
    out = {}
    for i, name in enumerate(names):
        column = draws[:, i]
        column = column[~np.isnan(column)]
        low, high = (
            (float(np.percentile(column, tail)), float(np.percentile(column, 100.0 - tail)))
            if len(column)
            else (math.nan, math.nan)
        )
        out[name] = Difference(other[name] - base[name], low, high)
    return out


def verdict(metric: str, difference: Difference | None) -> str:
    """better / worse: the interval excludes 0 on the good / bad side of `metric` (higher is
    better for auc, accuracy, r2; lower for the others); no difference: it includes 0."""
    if difference is None or math.isnan(difference.low) or math.isnan(difference.high):
        return UNKNOWN
    up = metric in HIGHER_IS_BETTER
    if difference.low > 0:
        return BETTER if up else WORSE
    if difference.high < 0:
        return WORSE if up else BETTER
    return SAME


# --------------------------------------------------------------------------------------------
# what one evaluation finds


@dataclass(frozen=True)
class ModelInfo:
    """What evaluating one spec model needs (shipped to the Spark tasks)."""

    name: str
    kind: str  # classifier | regressor
    classes: tuple[str, ...] | None
    proba: bool
    role: str  # champion | shadow | canary
    champion: str


@dataclass(frozen=True)
class ModelEvaluation:
    run_date: str | None
    run_id: str
    model: str
    model_version: str
    role: str
    champion: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Comparison:
    """A challenger against its champion on one run date's rows labelled for both: per metric,
    challenger - champion with its paired bootstrap interval; the verdict is on `metric`."""

    run_date: str | None
    challenger: str
    role: str
    champion: str
    metric: str
    paired_rows: int
    differences: dict[str, Difference]

    @property
    def difference(self) -> Difference | None:
        return self.differences.get(self.metric)

    @property
    def verdict(self) -> str:
        return verdict(self.metric, self.difference)

    def line(self) -> str:
        d = self.difference
        numbers = (
            f"no {self.metric} on paired rows"
            if d is None
            else f"{self.metric} {d.diff:+.4f} [{d.low:+.4f}, {d.high:+.4f}] on "
            f"{self.paired_rows:,} paired rows"
        )
        return (
            f"{self.run_date or 'undated'}: {self.role} '{self.challenger}' vs "
            f"'{self.champion}': {numbers}: challenger {self.verdict}"
        )


def summary_lines(
    evaluations: Sequence[ModelEvaluation],
    comparisons: Sequence[Comparison],
    unmatched: Mapping[str | None, int],
) -> list[str]:
    """One line per run date (labelled rows, unmatched labels, each model's main metric), one
    per challenger and date (its verdict), and the undated unmatched labels."""
    out = []
    for day in sorted({e.run_date for e in evaluations}, key=lambda d: d or ""):
        rows = [e for e in evaluations if e.run_date == day]
        labelled = max(int(e.metrics.get("labelled_rows", 0)) for e in rows)
        out.append(
            f"{day or 'undated'}: {labelled:,} labelled rows, {unmatched.get(day, 0):,} "
            f"unmatched labels; {', '.join(_main_metric(e) for e in rows)}"
        )
    out.extend(c.line() for c in comparisons)
    if unmatched.get(None):
        out.append(
            f"{unmatched[None]:,} labels matched no prediction and name no evaluated run date."
        )
    return out


def _main_metric(e: ModelEvaluation) -> str:
    name = next((m for m in ("auc", "rmse", "accuracy") if m in e.metrics), None)
    who = e.model if e.role == "champion" else f"{e.model} ({e.role})"
    return (
        f"{who} no scored labelled rows" if name is None else f"{who} {name} {e.metrics[name]:.4f}"
    )


# --------------------------------------------------------------------------------------------
# one group of labelled predictions (a run date's champion and its challengers), as Arrow

OWN = ""
"""The baseline of a model's own metrics in group rows (a comparison's is champion:<name>)."""
GroupRow = tuple[str | None, str, str, str, str, str, float, str]
FIELDS = ("run_date", "run_id", "model", "model_version", "role", "metric", "value", "baseline")
GROUP_DDL = ", ".join(f"{f} {'double' if f == 'value' else 'string'}" for f in FIELDS)
GROUP_ARROW = pa.schema([(f, pa.float64() if f == "value" else pa.string()) for f in FIELDS])


def group_table(rows: Sequence[GroupRow]) -> pa.Table:
    """A group's metric rows as the Arrow table the Spark task returns."""
    return pa.Table.from_pylist([dict(zip(FIELDS, r, strict=True)) for r in rows], GROUP_ARROW)


@dataclass
class _Measured:
    scores: Scores
    keys: pa.Table  # the on-columns of the measured rows, in the scores' order


def measure_family(
    table: pa.Table,
    run_date: str | None,
    family: str,
    infos: Mapping[str, ModelInfo],
    on: Sequence[str],
    versions: Mapping[str, Mapping[str, str]],
) -> list[GroupRow]:
    """Each model's metrics, then each challenger against the champion on their paired rows."""
    out: list[GroupRow] = []
    measured: dict[str, _Measured] = {}
    heads: dict[str, tuple[str, str, str]] = {}
    models = sorted(set(table.column("model").to_pylist()) - {None})
    for name in models:
        info = infos[name]
        rows = table.filter(pc.equal(table.column("model"), name))
        run_id = _first(rows.column("run_id")) or ""
        version = _first(rows.column("model_version")) or versions.get(run_id, {}).get(name, "")
        role = _first(rows.column("role")) or info.role
        heads[name] = (run_id, version, role)
        metrics, measured[name] = _measure(rows, info, on)
        for metric, value in metrics.items():
            if not math.isnan(value):
                out.append((run_date, run_id, name, version, role, metric, value, OWN))
    champion = measured.get(family)
    base = f"champion:{family}"
    for name in models:
        if name == family or champion is None:
            continue
        run_id, version, role = heads[name]
        paired, diffs = _compare(champion, measured[name], on)
        out.append((run_date, run_id, name, version, role, "paired_rows", float(paired), base))
        for metric, d in diffs.items():
            for suffix, value in (("diff", d.diff), ("diff_low", d.low), ("diff_high", d.high)):
                if not math.isnan(value):
                    out.append(
                        (run_date, run_id, name, version, role, f"{metric}_{suffix}", value, base)
                    )
    return out


def _first(column: pa.ChunkedArray) -> Any:
    for value in column.drop_null().to_pylist()[:1]:
        return value
    return None


def _measure(
    rows: pa.Table, info: ModelInfo, on: Sequence[str]
) -> tuple[dict[str, float], _Measured]:
    """(metrics incl. row counts, the measured rows) of one model's labelled rows."""
    n = rows.num_rows
    if info.kind == "regressor":
        y = _floats(rows.column("__truth_num"))
        yhat = _floats(rows.column("prediction"))
        scored = ~np.isnan(yhat)
        valid = scored & ~np.isnan(y)
        found = _Measured(RegressorScores(y[valid], yhat[valid]), _keys(rows, on, valid))
        counts = {"labelled_rows": n, "unscored_rows": int((~scored).sum())}
        counts["invalid_labels"] = int((scored & np.isnan(y)).sum())
    else:
        assert info.classes is not None
        truth = class_codes(rows.column("__truth").to_pylist(), info.classes)
        predicted = class_codes(rows.column("label").to_pylist(), info.classes)
        proba, has_proba = _proba(rows, len(info.classes)) if info.proba else (None, None)
        scored = predicted >= 0 if has_proba is None else (predicted >= 0) & has_proba
        valid = scored & (truth >= 0)
        kept = None if proba is None else proba[valid]
        found = _Measured(
            ClassifierScores(truth[valid], predicted[valid], kept), _keys(rows, on, valid)
        )
        counts = {"labelled_rows": n, "unscored_rows": int((~scored).sum())}
        counts["invalid_labels"] = int((scored & (truth < 0)).sum())
    metrics = {k: float(v) for k, v in counts.items()}
    metrics.update(found.scores.metrics())
    return metrics, found


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    values = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _proba(rows: pa.Table, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, width) class probabilities (NaN rows where null) and which rows have them."""
    column = rows.column("probability").combine_chunks()
    present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    out = np.full((rows.num_rows, width), np.nan)
    if present.any():
        values = column.filter(pa.array(present)).flatten().to_numpy(zero_copy_only=False)
        out[present] = np.asarray(values, dtype=np.float64).reshape(-1, width)
    if not present.all() and width == 2:  # a binary score without its vector
        p1 = _floats(rows.column("prediction"))
        fill = ~present & ~np.isnan(p1)
        out[fill] = np.column_stack([1.0 - p1[fill], p1[fill]])
        present = present | fill
    return out, present


def _keys(rows: pa.Table, on: Sequence[str], valid: np.ndarray) -> pa.Table:
    keys = rows.select(list(on)).filter(pa.array(valid))
    return keys.append_column("__row", pa.array(np.arange(keys.num_rows, dtype=np.int64)))


def _compare(
    champion: _Measured, challenger: _Measured, on: Sequence[str]
) -> tuple[int, dict[str, Difference]]:
    """The rows both models scored (same ids), aligned, and the paired bootstrap on them."""
    pairs = champion.keys.join(
        challenger.keys, keys=list(on), join_type="inner", left_suffix="_a", right_suffix="_b"
    )
    if pairs.num_rows == 0:
        return 0, {}
    a = pairs.column("__row_a").to_numpy()
    b = pairs.column("__row_b").to_numpy()
    return len(a), paired_bootstrap(_take(champion.scores, a), _take(challenger.scores, b))


def _take(scores: Scores, index: np.ndarray) -> Scores:
    if isinstance(scores, RegressorScores):
        return RegressorScores(scores.y[index], scores.yhat[index])
    assert isinstance(scores, ClassifierScores)
    proba = None if scores.proba is None else scores.proba[index]
    return ClassifierScores(scores.truth[index], scores.predicted[index], proba)
