"""Drift metrics: accuracy of the sketch-based numbers against exact ones, which changes alert
under the default thresholds and which do not, categories, vectors, threshold checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from scipy.stats import ks_2samp

from batchscore.errors import DataError, SpecError
from batchscore.monitor.accumulate import FeatureAccumulator
from batchscore.monitor.drift import (
    DEFAULT_THRESHOLDS,
    alerts,
    check_thresholds,
    coarse_starts,
    compare,
    counts_at,
)
from batchscore.monitor.profile import GRID, FeatureProfile

RNG = np.random.default_rng(11)


def profile(
    values: np.ndarray,
    null: np.ndarray | None = None,
    *,
    dtype: str = "double",
    edges: tuple[float, ...] | None = None,
    sketch: bool = False,
) -> FeatureProfile:
    acc = FeatureAccumulator("x", "numeric", dtype, edges=edges, sketch=sketch)
    for part, mask in zip(
        np.array_split(values, 4),
        np.array_split(null, 4) if null is not None else [None] * 4,
        strict=True,
    ):
        acc.add_numeric(part, mask)
    return acc.result()


def drift(current: np.ndarray, baseline: np.ndarray, **kwargs: object) -> dict[str, float]:
    """A training profile (sketch) of `baseline`, and `current` counted at its edges."""
    base = profile(baseline, sketch=True)
    null = kwargs.pop("null", None)
    now = profile(current, null, edges=base.edges, **kwargs)  # type: ignore[arg-type]
    return compare(now, base)


def test_sketch_based_psi_and_ks_are_within_a_hundredth_of_the_exact_ones() -> None:
    n = 1_000_000
    baseline = RNG.normal(size=n)
    base = profile(baseline, sketch=True)
    exact_edges = tuple(np.unique(np.quantile(baseline, np.arange(1, GRID) / GRID)).tolist())
    exact_base = profile(baseline, edges=exact_edges)
    for shift in (0.0, 0.2):
        current = RNG.normal(loc=shift, size=n)
        sketched = compare(profile(current, edges=base.edges), base)
        exact = compare(profile(current, edges=exact_edges), exact_base)
        ks = ks_2samp(baseline, current).statistic
        print(f"shift {shift}: sketch {sketched}, exact {exact}, ks_2samp {ks:.5f}")
        assert sketched["psi"] == pytest.approx(exact["psi"], abs=0.01)
        assert sketched["ks"] == pytest.approx(ks, abs=0.01)
        assert exact["ks"] == pytest.approx(ks, abs=0.002)  # the fine edges miss little


def test_a_new_sample_of_the_same_distribution_raises_no_alert() -> None:
    baseline, current = RNG.normal(5, 2, size=100_000), RNG.normal(5, 2, size=100_000)
    metrics = drift(current, baseline)
    assert set(metrics) == {"psi", "js", "ks"}
    assert alerts(metrics) == {}, metrics
    codes = drift(
        RNG.integers(0, 5, size=100_000).astype(float),
        RNG.integers(0, 5, size=100_000).astype(float),
        dtype="int64",
    )
    assert set(codes) == {"psi", "js", "ks"}  # the baseline profile is "double": no linf
    assert alerts(codes) == {}, codes


def test_half_a_standard_deviation_mean_shift_alerts_on_ks_and_js() -> None:
    metrics = drift(RNG.normal(0.5, 1, size=100_000), RNG.normal(0, 1, size=100_000))
    assert {"ks", "js"} <= set(alerts(metrics)), metrics
    assert metrics["ks"] == pytest.approx(0.197, abs=0.01)


def test_an_exploding_null_rate_alerts_on_psi_and_js() -> None:
    current = RNG.normal(size=100_000)
    null = RNG.random(100_000) < 0.3
    current[null] = np.nan
    metrics = drift(current, RNG.normal(size=100_000), null=null)
    assert {"psi", "js"} <= set(alerts(metrics)), metrics
    assert metrics["ks"] < 0.02  # the values that are there did not move


def test_a_unit_change_alerts() -> None:
    metrics = drift(RNG.normal(3, 1, size=100_000) * 1000, RNG.normal(3, 1, size=100_000))
    assert set(alerts(metrics)) == {"psi", "js", "ks"}, metrics


def test_a_new_integer_category_alerts_on_linf() -> None:
    codes = np.array([1.0, 2.0, 3.0])
    base = profile(RNG.choice(codes, size=50_000), dtype="int64", sketch=True)
    same = profile(RNG.choice(codes, size=50_000), dtype="int64", edges=base.edges)
    new = profile(
        RNG.choice([*codes, 4.0], p=[0.25, 0.25, 0.3, 0.2], size=50_000),
        dtype="int64",
        edges=base.edges,
    )
    assert base.categories.keys() == {"1", "2", "3"}
    assert "linf" in compare(same, base) and alerts(compare(same, base)) == {}
    metrics = compare(new, base)
    assert metrics["linf"] == pytest.approx(0.2, abs=0.01) and "linf" in alerts(metrics)


def test_coarse_bins_hold_a_twentieth_of_the_mass_even_for_discrete_data() -> None:
    fine = np.full(GRID, 1.0)
    starts = coarse_starts(fine)
    assert len(starts) == 20 and np.all(np.add.reduceat(fine, starts) >= GRID / 20)
    lumpy = np.array([50.0, 1, 1, 1, 1, 30, 16])
    assert coarse_starts(lumpy).tolist() == [0, 1, 6]  # 1+1+1+1 < 5: joined with the 30
    discrete = RNG.choice([0.0, 1.0, 2.0, 10.0], p=[0.7, 0.2, 0.08, 0.02], size=100_000)
    metrics = drift(
        RNG.choice([0.0, 1.0, 2.0, 10.0], p=[0.7, 0.2, 0.08, 0.02], size=100_000), discrete
    )
    assert metrics["psi"] < 0.01 and alerts(metrics) == {}


def test_current_counts_come_from_its_sketch_or_its_own_bins() -> None:
    baseline, current = RNG.normal(size=200_000), RNG.normal(0.3, 1, size=200_000)
    base = profile(baseline, sketch=True)
    at_edges = compare(profile(current, edges=base.edges), base)
    sketched = compare(profile(current, sketch=True), base)  # a training-style profile
    coarse_edges = tuple(np.linspace(-3, 3, 41).tolist())
    binned = profile(current, edges=coarse_edges)  # other edges, no sketch: interpolated
    interpolated = compare(binned, base)
    for metrics in (sketched, interpolated):
        assert metrics["ks"] == pytest.approx(at_edges["ks"], abs=0.01)
        assert metrics["psi"] == pytest.approx(at_edges["psi"], abs=0.01)
    counts = counts_at(binned, base.edges)
    assert counts.sum() == pytest.approx(binned.count) and (counts >= 0).all()


def categorical(values: list[str | None], dtype: str = "string") -> FeatureProfile:
    acc = FeatureAccumulator("c", "categorical", dtype)
    acc.add_categorical(pa.array(values))
    return acc.result()


def test_categorical_drift_compares_shares_with_other_and_missing() -> None:
    base = categorical(["a"] * 50 + ["b"] * 40 + [None] * 10)
    same = categorical(["a"] * 500 + ["b"] * 400 + [None] * 100)
    assert compare(same, base) == pytest.approx({"psi": 0.0, "js": 0.0, "linf": 0.0}, abs=1e-9)
    shifted = categorical(["a"] * 30 + ["b"] * 40 + ["c"] * 20 + [None] * 10)
    metrics = compare(shifted, base)
    assert metrics["linf"] == pytest.approx(0.2) and set(alerts(metrics)) == {"psi", "js", "linf"}
    flag_numeric = profile(np.array([0.0, 1.0, 1.0, 1.0]), dtype="bool")
    flag_training = categorical(["false", "true", "true", "true"], dtype="bool")
    assert compare(flag_numeric, flag_training)["linf"] == pytest.approx(0.0)


def test_sparse_drift_is_the_largest_change_of_a_non_zero_rate() -> None:
    def vectors(rate: float) -> FeatureProfile:
        dense = (RNG.random((10_000, 5)) < [0.5, rate, 0.1, 0.0, 0.9]).astype(float)
        acc = FeatureAccumulator("v", "sparse", "vector", width=5)
        acc.add_sparse(sp.csr_matrix(dense))
        return acc.result()

    base = vectors(0.2)
    assert compare(vectors(0.2), base)["linf"] < 0.03
    assert compare(vectors(0.5), base)["linf"] == pytest.approx(0.3, abs=0.03)


def test_kinds_that_cannot_be_compared_and_empty_sides() -> None:
    numbers = profile(RNG.normal(size=100), sketch=True)
    with pytest.raises(DataError, match=r"is numeric .* in the current data but categorical"):
        compare(numbers, replace(categorical(["a"]), feature="x"))
    assert compare(FeatureAccumulator("x", "numeric", "double").result(), numbers) == {}


def test_thresholds_are_checked_with_the_fix() -> None:
    assert check_thresholds({"psi": 0.5, "ks": 1}, "thresholds") == {"psi": 0.5, "ks": 1.0}
    assert check_thresholds(DEFAULT_THRESHOLDS, "defaults") == DEFAULT_THRESHOLDS
    with pytest.raises(SpecError, match=r"features.age: 'pis' is not a drift metric. Did you"):
        check_thresholds({"pis": 0.1}, "features.age")
    for bad in ({"psi": 0}, {"ks": 1.5}, {"js": -0.1}, {"linf": True}, {"psi": "high"}):
        with pytest.raises(SpecError, match="is out of range; give a number"):
            check_thresholds(bad, "thresholds")
    assert alerts({"psi": 0.3, "ks": 0.05}, {"psi": 0.2, "ks": 0.1}) == {"psi": 0.3}
