"""Bin counts without sorting (monitor.bins, monitor.native_bins): the same counts as sorting,
on any edges an index accepts, with numpy or the compiled loop, and accumulators that count
any way agree to the bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscore.monitor import bins, native_bins
from batchscore.monitor.accumulate import FeatureAccumulator
from batchscore.monitor.bins import EdgeIndex, sorting_is_faster
from batchscore.monitor.native_bins import NativeBins, NativeLoadError, counting

NATIVE = native_bins.native_bins()
WAYS = [None] if NATIVE is None else [None, NATIVE]


def below(index: EdgeIndex, values: np.ndarray, native: NativeBins | None) -> np.ndarray:
    return index.below(values) if native is None else native.below(index, values)


RNG = np.random.default_rng(11)


def sorted_below(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.sort(values).searchsorted(edges, side="right").astype(np.int64)


def quantile_edges(values: np.ndarray, grid: int = 200) -> np.ndarray:
    return np.unique(np.quantile(values, np.arange(1, grid) / grid))


def test_the_compiled_loop_is_built_where_the_driver_has_a_compiler() -> None:
    """CI has gcc: the native counting is exercised, not silently skipped."""
    if NATIVE is None:
        assert native_bins.toolchain.find_compiler() is None
    else:
        assert NATIVE.handle().bs_bins_abi() == 2


@pytest.mark.parametrize("native", WAYS)
def test_counts_equal_sorting_on_values_at_between_and_beyond_the_edges(
    native: NativeBins | None,
) -> None:
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
        assert np.array_equal(below(index, values, native), sorted_below(values, edges)), name


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
    for native in WAYS:
        assert np.array_equal(below(index, x, native), sorted_below(x, unique))


@pytest.mark.parametrize("sorting", [True, False])
@pytest.mark.parametrize("native", WAYS)
def test_accumulators_count_alike_whichever_way_is_faster(
    sorting: bool, native: NativeBins | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accumulator counts through the index only where timing says so; every way, with
    clean batches, sorted batches and batches with nulls, NaN and infinities, gives one profile."""
    sample = RNG.normal(size=30_000)
    edges = tuple(quantile_edges(sample[:3_000]).tolist())
    monkeypatch.setattr(native_bins, "sorting_is_faster", lambda *_: sorting)
    acc = FeatureAccumulator("x", "numeric", "double", edges=edges, native=native)
    assert acc.counts_unsorted is not sorting
    assert acc.native is (None if sorting else native)
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


def test_the_timing_is_taken_once_per_process_and_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bins, "_FASTER", {})
    timed: list[str] = []
    real = bins._time_sorting

    def counted(counter: bins.Counter) -> bool:
        timed.append("once")
        return real(counter)

    monkeypatch.setattr(bins, "_time_sorting", counted)
    first = sorting_is_faster()
    assert sorting_is_faster() is first and len(timed) == 1
    if NATIVE is not None:
        sorting_is_faster(NATIVE.below, NATIVE.sha256)
        sorting_is_faster(NATIVE.below, NATIVE.sha256)
        assert len(timed) == 2


@pytest.mark.skipif(NATIVE is None, reason="no C compiler on this machine")
def test_a_damaged_library_is_refused_and_counting_falls_back_to_numpy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert NATIVE is not None
    data = bytearray(NATIVE.data)
    data[len(data) // 2] ^= 0xFF
    damaged = NativeBins(bytes(data), NATIVE.sha256, NATIVE.platform)
    monkeypatch.setattr(native_bins, "_HANDLES", {})  # as in an executor that loads it first
    index = EdgeIndex.build(np.linspace(-1, 1, 9))
    assert index is not None
    loads: list[NativeBins] = []
    real_load = native_bins._load

    def load(native: NativeBins) -> object:
        loads.append(native)
        return real_load(native)

    monkeypatch.setattr(native_bins, "_load", load)
    for _ in range(3):  # refused once, then from memory (a task's inputs share one copy)
        with pytest.raises(NativeLoadError, match="sha256"):
            damaged.below(index, np.zeros(3))
    assert loads == [damaged]
    elsewhere = NativeBins(NATIVE.data, NATIVE.sha256, "other-os-arch")
    with pytest.raises(NativeLoadError, match="compiled on other-os-arch"):
        elsewhere.handle()
    monkeypatch.setattr(native_bins, "sorting_is_faster", lambda *_: False)
    assert counting(np.linspace(-1, 1, 9), damaged)[1] is None  # numpy, not the damaged bytes
    acc = FeatureAccumulator("x", "numeric", "double", edges=(-1.0, 0.0, 1.0), native=damaged)
    acc.add_numeric(np.array([-2.0, 0.0, 0.5, 3.0]))
    assert acc.native is None and acc.result().counts == (1.0, 1.0, 1.0, 1.0)


def test_no_compiler_means_numpy_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSCORE_CC", "none")
    assert native_bins.native_bins() is None


@pytest.mark.skipif(NATIVE is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("n", [1, 3, 4, 511, 512, 513, 5_000])
def test_the_native_summary_of_many_inputs_is_exact_and_refuses_what_it_cannot_sum(
    n: int,
) -> None:
    """One call summarizes every input of a batch, each against its own edges: counts equal
    sorting's, bounds equal numpy's, sum and squared deviations agree; an input with NaN, an
    infinity, or values whose sums or squares overflow gets None (nothing counted) and the
    others are unaffected."""
    assert NATIVE is not None
    base = RNG.normal(size=n)
    columns = {
        "normal": base,
        "shifted": base * 1e3 + 1e6,
        "at edges": np.round(base * 4) / 4,
        "constant": np.full(n, 0.25),
        "nan": np.where(np.arange(n) == n // 2, np.nan, base),
        "inf": np.where(np.arange(n) == n - 1, -np.inf, base),
        "huge": base * 1e300 + 1e307,
    }
    edges = {
        "normal": quantile_edges(RNG.normal(size=20_000)),
        "shifted": quantile_edges(RNG.normal(size=20_000) * 1e3 + 1e6, grid=50),
        "at edges": np.arange(-2.0, 2.01, 0.25),
    }
    indexes = [EdgeIndex.build(edges.get(k, edges["normal"])) for k in columns]
    assert all(i is not None for i in indexes)
    inputs = native_bins.InputSet([i for i in indexes if i is not None])
    got = NATIVE.summaries(inputs, [np.ascontiguousarray(v) for v in columns.values()])
    for (name, x), index, summary in zip(columns.items(), indexes, got, strict=True):
        assert index is not None
        if name in ("nan", "inf") or (name == "huge" and n > 1):  # (1e300)^2 overflows
            assert summary is None, name
            continue
        assert summary is not None, name
        assert np.array_equal(summary.below, sorted_below(x, index.padded[:-1])), name
        assert (summary.low, summary.high) == (x.min(), x.max()), name
        assert summary.total == pytest.approx(x.sum(), rel=1e-12, abs=1e-12), name
        m2 = float(((x - x.mean()) ** 2).sum())
        assert summary.m2 == pytest.approx(m2, rel=1e-9, abs=1e-12), name
