"""Profiles: accumulating Arrow/numpy batches, the JSON format, merging, flat tables."""

from __future__ import annotations

import itertools
import json
import pickle
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from batchscore.errors import DataError
from batchscore.monitor import accumulate
from batchscore.monitor.accumulate import FeatureAccumulator, merge_features
from batchscore.monitor.flat_tables import profile_arrow_table
from batchscore.monitor.profile import GRID, KLL_K, TOP, FeatureProfile, Profile, new_kll

RNG = np.random.default_rng(7)


def numeric(values: np.ndarray, **kwargs: object) -> FeatureProfile:
    acc = FeatureAccumulator("x", "numeric", "double", **kwargs)  # type: ignore[arg-type]
    for part in np.array_split(values, 4):
        acc.add_numeric(part)
    return acc.result()


def empirical_rank(sorted_values: np.ndarray, value: float) -> float:
    return float(np.searchsorted(sorted_values, value, side="right")) / len(sorted_values)


# ---------------------------------------------------------------- accumulating


def test_nulls_nan_and_infinities_are_counted_apart_from_the_moments() -> None:
    values = np.array([1.0, 2.0, np.nan, np.inf, -np.inf, 999.0, np.nan, 3.0])
    null = np.array([False, False, False, False, False, True, True, False])
    acc = FeatureAccumulator("x", "numeric", "double", edges=[1.5, 2.5])
    acc.add_numeric(values, null)
    p = acc.result()
    assert (p.rows, p.nulls, p.nan, p.inf, p.count) == (8, 2, 1, 2, 3)
    assert p.missing == 5
    assert (p.mean, p.std, p.min, p.max) == (2.0, 1.0, 1.0, 3.0)
    assert p.counts == (1.0, 1.0, 1.0) and p.counts_exact


def test_exact_counts_at_edges_use_right_closed_bins() -> None:
    x = RNG.integers(0, 50, size=20_000).astype(float)
    edges = [3.0, 10.0, 10.5, 40.0]
    p = numeric(x, edges=edges)
    bounds = [-np.inf, *edges, np.inf]
    expected = [((x > lo) & (x <= hi)).sum() for lo, hi in itertools.pairwise(bounds)]
    assert p.counts == tuple(float(c) for c in expected)


def test_sketch_bins_sit_at_quantiles_and_count_the_values() -> None:
    x = RNG.normal(size=50_000)
    p = numeric(x, sketch=True)
    assert (
        not p.counts_exact and len(p.edges) == GRID - 1 and sum(p.counts) == pytest.approx(50_000)
    )
    ordered = np.sort(x)
    error = new_kll().normalized_rank_error(False)
    ranks = [empirical_rank(ordered, e) for e in p.edges]
    assert np.abs(np.array(ranks) - np.arange(1, GRID) / GRID).max() <= error
    assert error <= 0.003 and KLL_K == 1000


def test_discrete_values_collapse_edges() -> None:
    p = numeric(RNG.choice([1.0, 2.0, 5.0], size=10_000, p=[0.5, 0.3, 0.2]), sketch=True)
    assert p.edges == (1.0, 2.0, 5.0) and p.counts[-1] == 0.0
    assert p.counts[:3] == pytest.approx([5000, 3000, 2000], abs=150)


def test_integer_columns_keep_value_counts_up_to_32_values() -> None:
    acc = FeatureAccumulator("code", "numeric", "int64", sketch=True)
    acc.add_numeric(np.array([3, 1, 3, 2, np.nan]), np.array([0, 0, 0, 0, 1], dtype=bool))
    p = acc.result()
    assert p.categories == {"1": 1, "2": 1, "3": 2} and p.other == 0 and p.distinct == 3
    acc.add_numeric(np.arange(40.0))
    assert acc.result().categories == {}
    float_column = FeatureAccumulator("f", "numeric", "double")
    float_column.add_numeric(np.array([1.0, 2.0]))
    assert float_column.result().categories == {}


def test_categorical_counts_strings_booleans_and_dictionaries() -> None:
    acc = FeatureAccumulator("city", "categorical", "string")
    acc.add_categorical(pa.array(["a", "b", None, "a"]))
    acc.add_categorical(pa.array(["b", "c", "b"]).dictionary_encode())
    p = acc.result()
    assert p.categories == {"b": 3, "a": 2, "c": 1} and (p.rows, p.nulls) == (7, 1)
    assert p.distinct == 3 and p.other == 0 and p.distinct_sketch
    flag = FeatureAccumulator("flag", "categorical", "bool")
    flag.add_categorical(pa.array([True, False, True, None]))
    assert flag.result().categories == {"true": 2, "false": 1}


def test_only_the_top_categories_are_named_and_the_distinct_count_is_estimated() -> None:
    values = [f"v{i}" for i in range(300) for _ in range(1 + i % 3)]
    acc = FeatureAccumulator("id", "categorical", "string")
    acc.add_categorical(pa.array(values))
    p = acc.result()
    assert len(p.categories) == TOP and p.distinct == 300
    assert sum(p.categories.values()) + p.other == len(values)
    assert min(p.categories.values()) == 3


def test_high_cardinality_columns_keep_a_bounded_number_of_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accumulate, "MAX_TRACKED", 5)
    acc = FeatureAccumulator("id", "categorical", "string")
    for start in (0, 10, 20):  # 40 distinct values, "hot" in every batch
        acc.add_categorical(pa.array(["hot"] * 10 + [f"v{start + i}" for i in range(20)]))
    p = acc.result()
    assert p.categories["hot"] == 30 and len(acc.cats) <= 10
    assert sum(p.categories.values()) + p.other == p.rows == 90
    assert p.distinct == pytest.approx(41, abs=1)  # the CPC sketch, no longer exact


def test_sparse_vectors_count_non_zero_rows_per_index() -> None:
    block = sp.csr_matrix(np.array([[0, 1.0, 0], [2.0, 0, 0], [0, 0, 0], [3.0, 4.0, 0]]))
    acc = FeatureAccumulator("v", "sparse", "vector", width=3)
    acc.add_sparse(block, np.array([False, False, True, False]))
    p = acc.result()
    assert (p.rows, p.nulls, p.width, p.nonzero) == (4, 1, 3, (2, 2, 0))
    with pytest.raises(DataError, match="width 2, not 3"):
        acc.add_sparse(sp.csr_matrix(np.ones((1, 2))))


def test_accumulators_pickle_and_merge_like_one() -> None:
    x = RNG.normal(size=30_000)
    left = FeatureAccumulator("x", "numeric", "double", edges=[-1.0, 0.0, 1.0], sketch=True)
    right = FeatureAccumulator("x", "numeric", "double", edges=[-1.0, 0.0, 1.0], sketch=True)
    left.add_numeric(x[:10_000])
    right.add_numeric(x[10_000:])
    merged = pickle.loads(pickle.dumps(left)).merge(pickle.loads(pickle.dumps(right))).result()
    whole = numeric(x, edges=[-1.0, 0.0, 1.0], sketch=True)
    assert merged.counts == whole.counts and merged.count == whole.count
    assert merged.mean == pytest.approx(whole.mean, rel=1e-12, abs=1e-12)
    assert merged.m2 == pytest.approx(whole.m2, rel=1e-12)
    with pytest.raises(DataError, match="differ in feature, kind, width or edges"):
        left.merge(FeatureAccumulator("x", "numeric", "double"))


def test_add_numeric_with_edges_costs_milliseconds_per_million_values() -> None:
    x = RNG.normal(size=1_000_000)
    edges = numeric(x[:100_000], sketch=True).edges
    best = np.inf
    for _ in range(3):
        acc = FeatureAccumulator("x", "numeric", "double", edges=edges)
        start = time.perf_counter()
        acc.add_numeric(x)
        best = min(best, time.perf_counter() - start)
    print(f"add_numeric with {len(edges)} edges: {best * 1e3:.1f} ms per 1M values")
    assert best < 0.5  # ~20-60 ms on a shared laptop core; an order of magnitude of slack


def test_label_codes_count_like_the_label_strings() -> None:
    names = ("no", "yes", "maybe")
    codes = RNG.integers(-1, 2, 5_000)  # never "maybe"; -1 is a null label
    by_codes = FeatureAccumulator("label", "categorical", "string")
    by_strings = FeatureAccumulator("label", "categorical", "string")
    for part in np.array_split(codes, 3):
        by_codes.add_codes(part, names)
        by_strings.add_categorical(pa.array([names[c] if c >= 0 else None for c in part]))
    x, y = by_codes.result(), by_strings.result()
    assert (x.rows, x.nulls, x.categories, x.distinct) == (
        y.rows,
        y.nulls,
        y.categories,
        y.distinct,
    )
    assert set(x.categories) == {"no", "yes"}


def test_a_sorted_clean_batch_adds_like_the_unsorted_one() -> None:
    """The monitoring pass hands clean inputs in sorted (the sort is shared with
    validation): the same profile as add_numeric, for binned and integer features."""
    edges = tuple(np.linspace(-2, 2, 41).tolist())
    cases = [
        (RNG.normal(size=3_000), "double", {"edges": edges}),
        (RNG.normal(size=3_000) * 1e6 + 1e9, "double", {"edges": (1e9,), "sketch": True}),
        (RNG.integers(0, 5, 3_000).astype(float), "int64", {}),
        (np.zeros(0), "double", {"edges": edges}),
    ]
    for values, dtype, options in cases:
        sorted_in = FeatureAccumulator("x", "numeric", dtype, **options)  # type: ignore[arg-type]
        plain = FeatureAccumulator("x", "numeric", dtype, **options)  # type: ignore[arg-type]
        scratch = np.full(len(values), np.nan)  # one buffer reused by every part
        for part in np.array_split(values, 3):
            sorted_in.add_ordered(np.sort(part), scratch)
            plain.add_numeric(part)
        x, y = sorted_in.result(), plain.result()
        assert (x.rows, x.count, x.min, x.max, x.categories) == (
            y.rows,
            y.count,
            y.min,
            y.max,
            y.categories,
        )
        if not options.get("sketch"):
            assert (x.edges, x.counts) == (y.edges, y.counts)
        assert x.mean == pytest.approx(y.mean, rel=1e-12)
        assert x.m2 == pytest.approx(y.m2, rel=1e-9)
    assert sorted_in.result().rows == 0


# ---------------------------------------------------------------- merging profiles


def test_merged_profiles_equal_the_profile_of_the_union() -> None:
    a = RNG.normal(10.0, 2.0, size=120_000)
    b = RNG.lognormal(1.0, 0.5, size=80_000)
    union = np.concatenate([a, b])
    merged = merge_features(numeric(a, sketch=True), numeric(b, sketch=True))
    whole = numeric(union, sketch=True)
    assert (merged.rows, merged.count) == (whole.rows, whole.count)
    assert merged.mean == pytest.approx(union.mean(), rel=1e-9)
    assert merged.m2 == pytest.approx(((union - union.mean()) ** 2).sum(), rel=1e-9)
    assert (merged.min, merged.max) == (union.min(), union.max())
    ordered = np.sort(union)
    error = new_kll().normalized_rank_error(False)
    ranks = np.array([empirical_rank(ordered, e) for e in merged.edges])
    assert np.abs(ranks - np.arange(1, len(ranks) + 1) / GRID).max() <= error
    assert not merged.counts_exact and sum(merged.counts) == pytest.approx(len(union))

    edges = whole.edges
    exact = merge_features(numeric(a, edges=edges), numeric(b, edges=edges))
    assert exact.counts_exact and exact.counts == numeric(union, edges=edges).counts


def test_merge_of_categories_retakes_the_top() -> None:
    def cat(values: list[str]) -> FeatureProfile:
        acc = FeatureAccumulator("c", "categorical", "string")
        acc.add_categorical(pa.array(values))
        return acc.result()

    left = cat([f"a{i}" for i in range(80)] + ["x"] * 5)
    right = cat([f"b{i}" for i in range(80)] + ["x"] * 5)
    merged = merge_features(left, right)
    assert merged.categories["x"] == 10 and len(merged.categories) == TOP
    assert sum(merged.categories.values()) + merged.other == 170
    assert merged.distinct == pytest.approx(161, abs=2)


def test_profiles_merge_feature_by_feature() -> None:
    one = profile_arrow_table(pa.table({"x": [1.0, 2.0], "c": ["a", "b"]}), source="one")
    two = profile_arrow_table(pa.table({"x": [3.0, None], "c": ["a", None]}), source="two")
    merged = one.merge(two)
    assert merged.rows == 4 and merged.source == "one + two"
    assert merged.features["x"].mean == 2.0 and merged.features["x"].nulls == 1
    assert merged.features["c"].categories == {"a": 2, "b": 1}
    with pytest.raises(DataError, match=r"their features differ \(y in only one\)"):
        one.merge(profile_arrow_table(pa.table({"x": [1.0], "c": ["a"], "y": [1]}), source="3"))


def test_parts_binned_at_different_edges_without_sketches_do_not_merge() -> None:
    x = RNG.normal(size=100)
    with pytest.raises(DataError, match="binned at different edges and have no sketches"):
        merge_features(numeric(x, edges=[0.0]), numeric(x, edges=[1.0]))
    empty = FeatureAccumulator("x", "numeric", "double").result()
    assert merge_features(empty, numeric(x, edges=[0.0])).edges == (0.0,)


# ---------------------------------------------------------------- the file format


def sample_profile() -> Profile:
    table = pa.table(
        {
            "age": pa.array([30, 41, None, 25], pa.int64()),
            "income": [1.5, float("nan"), 3.0, 4.5],
            "city": ["a", "b", "a", None],
        }
    )
    profile = profile_arrow_table(table, source="train.parquet")
    prediction = replace(numeric(RNG.normal(size=1000), sketch=True), feature="prediction")
    return Profile(
        features=profile.features,
        predictions={"prediction": prediction},
        rows=4,
        source="train.parquet",
        model="churn",
    )


def test_json_round_trip_keeps_every_field(tmp_path: Path) -> None:
    profile = sample_profile()
    path = profile.save(tmp_path / "prof")
    assert path == tmp_path / "prof" / "profile.json"
    data = json.loads(path.read_text())
    assert data["format"] == "batchscore.profile/1"
    assert [f["feature"] for f in data["features"]] == ["age", "income", "city"]
    loaded = Profile.load(tmp_path / "prof")
    assert loaded == profile and Profile.load(path) == profile
    assert Profile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
    kll = loaded.predictions["prediction"].kll()
    assert kll is not None and kll.n == 1000


def test_a_feature_without_its_edges_parses_with_the_edges_given() -> None:
    """A scoring task's file leaves out the training edges the driver gave it; the driver puts
    them back when it parses the file, and still refuses counts that do not fit them."""
    edges = (-1.0, 0.0, 1.0)
    feature = numeric(RNG.normal(size=1000), edges=edges)
    data = json.loads(json.dumps(feature.to_json()))
    slim = {k: v for k, v in data.items() if k != "edges"}
    assert FeatureProfile.from_json(slim, edges=edges) == feature
    assert FeatureProfile.from_json(data, edges=(5.0,)) == feature  # its own edges win
    with pytest.raises(DataError, match="3 edges need 4 counts, not 3"):
        FeatureProfile.from_json({**slim, "counts": data["counts"][:3]}, edges=edges)


def test_missing_and_garbage_profiles_are_one_line_errors(tmp_path: Path) -> None:
    def error(directory: Path) -> str:
        with pytest.raises(DataError) as caught:
            Profile.load(directory)
        text = str(caught.value)
        assert "\n" not in text and text.endswith("make one with `batchscore profile`.")
        return text

    assert "does not exist" in error(tmp_path / "nowhere")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "profile.json").write_text("{not json")
    assert "is not a batchscore profile (Expecting property name" in error(tmp_path / "garbage")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "profile.json").write_text('{"format": "x/2", "rows": 1}')
    assert "format is 'x/2', expected 'batchscore.profile/1'" in error(tmp_path / "other")
    data = sample_profile().to_json()
    data["features"][1]["kind"] = "weird"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "profile.json").write_text(json.dumps(data))
    assert "features 'income': kind 'weird' is not one of" in error(tmp_path / "bad")
    with pytest.raises(DataError, match=r"Profile JSON is not a batchscore profile \(format"):
        Profile.from_json({"rows": 1})


def test_lookup_matches_exact_labels_then_bare_column_names() -> None:
    f = {n: FeatureProfile(n, "numeric", "double") for n in ("age", "v[3]", "a.id", "b.id")}
    profile = Profile(features=f, predictions={"prediction": FeatureProfile("p", "numeric", "d")})
    assert profile.lookup("age") is f["age"] and profile.lookup("users.age") is f["age"]
    assert profile.lookup("stores.v[3]") is f["v[3]"] and profile.lookup("stores.v[2]") is None
    assert profile.lookup("a.id") is f["a.id"] and profile.lookup("c.id") is None  # ambiguous
    assert profile.lookup("prediction") is profile.predictions["prediction"]


# ---------------------------------------------------------------- flat tables


def test_flat_tables_profile_numbers_categories_and_fixed_length_lists() -> None:
    table = pa.table(
        {
            "n": pa.array([1, 2, None, 4], pa.int32()),
            "flag": [True, False, None, True],
            "city": pa.array(["a", "b", "a", "a"]).dictionary_encode(),
            "emb": pa.array([[1.0, 2.0], [3.0, None], None, [5.0, 6.0]], pa.list_(pa.float64())),
            "fixed": pa.array([[1, 2]] * 4, pa.list_(pa.int64(), 2)),
            "when": pa.array([0, 1, 2, 3], pa.timestamp("s")),
        }
    )
    profile = profile_arrow_table(table, source="t")
    assert list(profile.features) == [
        "n",
        "flag",
        "city",
        "emb[0]",
        "emb[1]",
        "fixed[0]",
        "fixed[1]",
    ]
    n = profile.features["n"]
    assert (n.kind, n.dtype, n.count, n.nulls, n.mean) == ("numeric", "int32", 3, 1, 7 / 3)
    assert profile.features["flag"].categories == {"true": 2, "false": 1}
    assert profile.features["city"].categories == {"a": 3, "b": 1}
    emb1 = profile.features["emb[1]"]
    assert (emb1.dtype, emb1.count, emb1.nulls, emb1.mean) == ("double", 2, 2, 4.0)
    assert profile.features["fixed[1]"].categories == {"2": 4}


def test_flat_table_errors_name_the_column_and_the_fix() -> None:
    table = pa.table({"amount": [1.0], "when": pa.array([0], pa.timestamp("s"))})
    with pytest.raises(DataError, match=r"Column 'amout' is not in t\. Did you mean 'amount'"):
        profile_arrow_table(table, ["amout"], source="t")
    with pytest.raises(DataError, match=r"Column 'when' of t has type timestamp\[s\]"):
        profile_arrow_table(table, ["when"], source="t")
    ragged = pa.table({"v": pa.array([[1.0], [1.0, 2.0]])})
    with pytest.raises(DataError, match=r"holds lists of lengths \[1, 2\]"):
        profile_arrow_table(ragged, source="t")
