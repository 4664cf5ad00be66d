"""Bin counts without sorting (monitor.bins): the same counts as sorting, on any edges it
accepts, and accumulators that count either way agree to the bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscore.monitor import accumulate
from batchscore.monitor.accumulate import FeatureAccumulator
from batchscore.monitor.bins import EdgeIndex, sorting_is_faster

RNG = np.random.default_rng(11)


def sorted_below(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.sort(values).searchsorted(edges, side="right").astype(np.int64)


def quantile_edges(values: np.ndarray, grid: int = 200) -> np.ndarray:
    return np.unique(np.quantile(values, np.arange(1, grid) / grid))


def test_counts_equal_sorting_on_values_at_between_and_beyond_the_edges() -> None:
    cases = {
        "normal": RNG.normal(size=50_000),
        "large offset": 1e9 + RNG.normal(size=50_000),
        "uniform": RNG.uniform(-3, 7, size=50_000),
        "lognormal": RNG.lognormal(0.0, 1.0, size=50_000),
        "rounded": np.round(RNG.normal(size=50_000), 2),
    }
    for name, sample in cases.items():
        edges = quantile_edges(sample[:5_000])
        index = EdgeIndex.build(edges)
        assert index is not None, name
        values = np.concatenate(
            [
                sample,
                edges,  # exactly on an edge: in the bin it closes
                np.nextafter(edges, np.inf),
                np.nextafter(edges, -np.inf),
                [edges[0] - 1e6, edges[-1] + 1e6, -1e308, 1e308, 0.0, -0.0],
            ]
        )
        assert np.array_equal(index.below(values), sorted_below(values, edges)), name


def test_edges_that_do_not_suit_an_index_get_none() -> None:
    assert EdgeIndex.build(np.array([1.0])) is None  # one edge: no range
    assert EdgeIndex.build(np.array([], dtype=float)) is None
    long_tail = np.concatenate([np.linspace(0, 1, 190), np.geomspace(10, 1e9, 9)])
    assert EdgeIndex.build(long_tail) is None  # most edges in the grid's first cells
    close = 1e15 + np.arange(10.0)  # too close for their magnitude
    assert EdgeIndex.build(close) is None
    assert EdgeIndex.build(np.array([5e-324, 1e-323])) is None  # a width 1/width overflows
    assert EdgeIndex.build(np.array([-1.5e308, 1.5e308])) is None  # a width past the doubles


@settings(max_examples=200, deadline=None)
@given(
    edges=st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False), min_size=2, max_size=60
    ),
    values=st.lists(st.floats(-2e6, 2e6, allow_nan=False), min_size=1, max_size=200),
)
def test_any_index_built_counts_exactly(edges: list[float], values: list[float]) -> None:
    unique = np.unique(np.asarray(edges))
    index = EdgeIndex.build(unique)
    if index is None:
        return
    x = np.concatenate([np.asarray(values), unique])
    assert np.array_equal(index.below(x), sorted_below(x, unique))


@pytest.mark.parametrize("sorting", [True, False])
def test_accumulators_count_alike_whichever_way_is_faster(
    sorting: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accumulator counts through the index only where timing says so; both ways, with
    clean batches, sorted batches and batches with nulls, NaN and infinities, give one profile."""
    sample = RNG.normal(size=30_000)
    edges = tuple(quantile_edges(sample[:3_000]).tolist())
    monkeypatch.setattr(accumulate, "sorting_is_faster", lambda: sorting)
    acc = FeatureAccumulator("x", "numeric", "double", edges=edges)
    assert acc.counts_unsorted is not sorting
    reference = FeatureAccumulator("x", "numeric", "double", edges=edges)
    reference.index = None  # counts by sorting, as before the index existed
    parts = np.array_split(sample, 3)
    parts[2][:5] = [np.nan, np.inf, -np.inf, np.nan, 0.5]
    null = np.zeros(len(parts[2]), dtype=bool)
    null[3] = True
    if acc.counts_unsorted:
        acc.add_clean(parts[0], float(parts[0].min()), float(parts[0].max()), np.empty(20_000))
    else:
        acc.add_ordered(np.sort(parts[0]))
    acc.add_ordered(np.sort(parts[1]))
    acc.add_numeric(parts[2], null)
    for i, part in enumerate(parts):
        reference.add_numeric(part, null if i == 2 else None)
    x, y = acc.result(), reference.result()
    assert (x.rows, x.nulls, x.nan, x.inf, x.count, x.min, x.max) == (
        y.rows,
        y.nulls,
        y.nan,
        y.inf,
        y.count,
        y.min,
        y.max,
    )
    assert (x.edges, x.counts) == (y.edges, y.counts)
    assert x.mean == pytest.approx(y.mean, rel=1e-12)
    assert x.m2 == pytest.approx(y.m2, rel=1e-9)


def test_the_timing_is_taken_once_per_process() -> None:
    first = sorting_is_faster()
    assert sorting_is_faster() is first
    assert sorting_is_faster.cache_info().misses == 1
