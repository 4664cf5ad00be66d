"""The evaluation metrics equal scikit-learn's on the same rows; the paired bootstrap and the
verdicts behave (batchscore.monitor.evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from sklearn import metrics as sk

from batchscore.monitor import evaluation as ev

TOL = 1e-9


def _binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p1 = rng.random(n)
    p1[: n // 10] = np.round(p1[: n // 10], 1)  # ties
    p1[:3] = [0.0, 1.0, 1e-20]  # log loss clipping
    y = (rng.random(n) < p1).astype(np.int64)
    return y, np.column_stack([1.0 - p1, p1])


@pytest.mark.parametrize("weighted", [False, True])
def test_binary_metrics_equal_sklearn(weighted: bool) -> None:
    y, proba = _binary(2_000, 1)
    w = np.random.default_rng(2).integers(0, 4, len(y)).astype(float) if weighted else None
    predicted = (proba[:, 1] > 0.5).astype(np.int64)
    got = ev.ClassifierScores(y, predicted, proba).metrics(w)
    assert got["auc"] == pytest.approx(sk.roc_auc_score(y, proba[:, 1], sample_weight=w), abs=TOL)
    assert got["log_loss"] == pytest.approx(sk.log_loss(y, proba, sample_weight=w), abs=TOL)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted, sample_weight=w))
    brier = sk.brier_score_loss(y, proba[:, 1], sample_weight=w)
    assert got["brier"] == pytest.approx(brier, abs=TOL)
    assert got["ece"] == pytest.approx(_ece_loop(y, proba[:, 1], w), abs=TOL)


def _ece_loop(y: np.ndarray, p: np.ndarray, w: np.ndarray | None) -> float:
    w = np.ones(len(y)) if w is None else w
    total = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        inside = (p >= lo) & ((p < hi) if b < 9 else (p <= hi))
        if w[inside].sum() > 0:
            gap = np.average(y[inside], weights=w[inside]) - np.average(
                p[inside], weights=w[inside]
            )
            total += w[inside].sum() * abs(gap)
    return total / w.sum()


def test_multiclass_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(3)
    raw = rng.random((900, 3))
    proba = raw / raw.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in proba])
    predicted = proba.argmax(axis=1)
    got = ev.ClassifierScores(y, predicted, proba).metrics()
    labels = [0, 1, 2]
    auc = sk.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels)
    assert got["auc"] == pytest.approx(auc, abs=TOL)
    assert got["log_loss"] == pytest.approx(sk.log_loss(y, proba, labels=labels), abs=TOL)
    assert got["brier"] == pytest.approx(sk.brier_score_loss(y, proba, labels=labels), abs=TOL)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted), abs=TOL)
    assert "ece" not in got


@pytest.mark.parametrize("weighted", [False, True])
def test_regression_metrics_equal_sklearn(weighted: bool) -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=1_000)
    yhat = y + rng.normal(0.0, 0.5, size=1_000)
    w = rng.integers(0, 3, len(y)).astype(float) if weighted else None
    got = ev.RegressorScores(y, yhat).metrics(w)
    mse = sk.mean_squared_error(y, yhat, sample_weight=w)
    assert got["rmse"] == pytest.approx(math.sqrt(mse), abs=TOL)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(y, yhat, sample_weight=w), abs=TOL)
    assert got["r2"] == pytest.approx(sk.r2_score(y, yhat, sample_weight=w), abs=TOL)
    constant = np.full(5, 2.0)
    assert ev.r2(constant, constant) == sk.r2_score(constant, constant) == 1.0
    assert ev.r2(constant, constant + 1) == sk.r2_score(constant, constant + 1) == 0.0


def test_auc_is_undefined_with_one_class() -> None:
    assert math.isnan(ev.auc(np.ones(5, bool), np.linspace(0, 1, 5)))


def test_labels_match_classes_as_strings_then_case_then_numbers() -> None:
    assert ev.class_codes(["True", "false", None, "maybe"], ["False", "True"]).tolist() == [
        1, 0, -1, -1,
    ]  # fmt: skip
    assert ev.class_codes(["1", "0.0", "2", 1.0], ["0.0", "1.0"]).tolist() == [1, 0, -1, 1]
    assert ev.class_codes(["b", "a", float("nan")], ["a", "b"]).tolist() == [1, 0, -1]


def test_paired_bootstrap_finds_a_better_challenger_and_no_difference_with_itself() -> None:
    rng = np.random.default_rng(5)
    n = 3_000
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.2, n), 0, 1)
    weak = np.clip(0.5 + (y - 0.5) * 0.2 + rng.normal(0, 0.3, n), 0, 1)

    def scores(p: np.ndarray) -> ev.ClassifierScores:
        return ev.ClassifierScores(y, (p > 0.5).astype(np.int64), np.column_stack([1 - p, p]))

    champion, challenger = scores(weak), scores(good)
    diffs = ev.paired_bootstrap(champion, challenger)
    assert set(diffs) == {"auc", "log_loss", "accuracy", "brier", "ece"}
    auc = diffs["auc"]
    assert auc.low <= auc.diff <= auc.high and auc.low > 0
    assert ev.verdict("auc", auc) == ev.BETTER
    assert ev.verdict("log_loss", diffs["log_loss"]) == ev.BETTER
    assert ev.verdict("auc", ev.paired_bootstrap(challenger, champion)["auc"]) == ev.WORSE
    same = ev.paired_bootstrap(champion, champion)["auc"]
    assert same == ev.Difference(0.0, 0.0, 0.0) and ev.verdict("auc", same) == ev.SAME
    again = ev.paired_bootstrap(champion, challenger)
    assert again == diffs  # fixed seed
    assert ev.verdict("auc", None) == ev.UNKNOWN


def test_paired_bootstrap_for_regressors_decides_lower_rmse_is_better() -> None:
    rng = np.random.default_rng(6)
    y = rng.normal(size=2_000)
    near = ev.RegressorScores(y, y + rng.normal(0, 0.1, len(y)))
    far = ev.RegressorScores(y, y + rng.normal(0, 1.0, len(y)))
    diffs = ev.paired_bootstrap(far, near)
    assert ev.verdict("rmse", diffs["rmse"]) == ev.BETTER
    assert ev.verdict("r2", diffs["r2"]) == ev.BETTER
    with pytest.raises(ValueError):
        ev.paired_bootstrap(far, ev.RegressorScores(y[:5], y[:5]))


def _group(
    model_rows: dict[str, tuple[list[int], list[float]]], truth: dict[int, float]
) -> pa.Table:
    """A group as the Spark job hands it over: one row per (label row, model)."""
    columns: dict[str, list[object]] = {
        k: [] for k in ("id", "model", "model_version", "role", "run_id", "prediction")
    }
    for model, (ids, values) in model_rows.items():
        for i, value in zip(ids, values, strict=True):
            columns["id"].append(i)
            columns["model"].append(model)
            columns["model_version"].append("v1")
            columns["role"].append(None)
            columns["run_id"].append("r1")
            columns["prediction"].append(value)
    table = pa.table(columns)
    n = table.num_rows
    return (
        table.append_column("label", pa.nulls(n, pa.string()))
        .append_column("probability", pa.nulls(n, pa.list_(pa.float64())))
        .append_column("__truth", pa.array([str(truth[i]) for i in columns["id"]]))
        .append_column("__truth_num", pa.array([truth[i] for i in columns["id"]], pa.float64()))
    )


def test_a_family_pairs_the_challenger_with_the_champion_on_shared_ids() -> None:
    truth = {i: float(i) for i in range(6)}
    group = _group(
        {
            "base": ([0, 1, 2, 3, 4, 5], [0.5, 1.5, 2.5, 3.5, None, 5.5]),  # id 4 unscored
            "alt": ([1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 4.0, 5.0]),
        },
        truth,
    )
    infos = {
        "base": ev.ModelInfo("base", "regressor", None, False, "champion", "base"),
        "alt": ev.ModelInfo("alt", "regressor", None, False, "shadow", "base"),
    }
    rows = ev.measure_family(group, "2026-11-02", "base", infos, ["id"], {})
    found = {(r[2], r[5], r[7]): r[6] for r in rows}
    assert found[("base", "labelled_rows", ev.OWN)] == 6
    assert found[("base", "unscored_rows", ev.OWN)] == 1
    assert found[("base", "rmse", ev.OWN)] == pytest.approx(0.5)
    assert found[("alt", "rmse", ev.OWN)] == 0.0
    assert found[("alt", "paired_rows", "champion:base")] == 4  # ids 1, 2, 3, 5
    assert found[("alt", "rmse_diff", "champion:base")] == pytest.approx(-0.5)
    assert found[("alt", "rmse_diff_high", "champion:base")] == pytest.approx(-0.5)
    assert {r[4] for r in rows if r[2] == "alt"} == {"shadow"}
