"""Model health without Spark: rules from profiles, user SQL rewriting, the scoring pass's
accumulators (scalars, array positions, sparse vectors, predictions), monitoring rows, and the
errors a bad health setting gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batchscore.datasets._write import VECTOR_STRUCT
from batchscore.errors import SpecError
from batchscore.kernels.base import ScoreOutput
from batchscore.monitor import native_bins
from batchscore.monitor.accumulate import FeatureAccumulator
from batchscore.monitor.health import ModelHealth
from batchscore.monitor.metrics import alert_line, model_rows
from batchscore.monitor.profile import Profile
from batchscore.monitor.rules import FeatureInput, Rule, distinct_rules, profile_rules
from batchscore.physical.input_stack import InputStack
from batchscore.physical.monitoring import (
    MonitoredInput,
    MonitoredModel,
    RunMonitor,
    merge_bodies,
)
from batchscore.physical.validation import RuleTally, rewrite_sql
from batchscore.spec import load_spec
from batchscore.spec.model import ValidationSpec

RNG = np.random.default_rng(21)


def _numeric(name: str, values: np.ndarray, dtype: str = "double", **options: object) -> object:
    acc = FeatureAccumulator(name, "numeric", dtype, sketch=True, **options)  # type: ignore[arg-type]
    acc.add_numeric(values.astype(float))
    return acc.result()


def _profile(**columns: np.ndarray) -> Profile:
    features = {}
    for name, values in columns.items():
        dtype = "int64" if values.dtype.kind == "i" else "double"
        features[name] = _numeric(name, values, dtype)
    return Profile(features=features, rows=len(next(iter(columns.values()))), source="test")  # type: ignore[arg-type]


def test_profile_rules_cover_range_domain_nan_and_null_rate() -> None:
    profile = _profile(age=RNG.normal(40, 10, 5_000), code=RNG.integers(0, 4, 5_000))
    inputs = [FeatureInput("users__age", "users.age"), FeatureInput("users__code", "users.code")]
    rules = profile_rules("churn", inputs, profile, ValidationSpec(actions={"domain": "fail"}))
    kinds = {(r.kind, r.column): r for r in rules}
    assert set(kinds) == {
        ("range", "users.age"), ("nan", "users.age"), ("null_rate", "users.age"),
        ("range", "users.code"), ("domain", "users.code"), ("nan", "users.code"),
        ("null_rate", "users.code"), ("type", "users.age"), ("type", "users.code"),
    }  # fmt: skip
    assert kinds[("type", "users.code")].dtype == "integer"
    age = kinds[("range", "users.age")]
    span = profile.features["age"].max - profile.features["age"].min  # type: ignore[operator]
    assert age.low == pytest.approx(profile.features["age"].min - 0.1 * span)  # type: ignore[operator]
    assert kinds[("domain", "users.code")].domain == (0.0, 1.0, 2.0, 3.0)
    assert kinds[("domain", "users.code")].action == "fail"
    assert kinds[("null_rate", "users.age")].limit == pytest.approx(0.05)
    off = profile_rules("churn", inputs, profile, ValidationSpec(profile_rules=False))
    assert off == []


def test_shared_rules_are_kept_once_and_differing_ones_named_by_model() -> None:
    profile = _profile(age=RNG.normal(size=1_000))
    other = _profile(age=RNG.normal(5, 1, size=1_000))
    inputs = [FeatureInput("users__age", "users.age")]
    section = ValidationSpec()
    same = distinct_rules(
        profile_rules("a", inputs, profile, section) + profile_rules("b", inputs, profile, section)
    )
    assert len(same) == 4 and {r.model for r in same} == {"a, b"}
    differ = distinct_rules(
        profile_rules("a", inputs, profile, section) + profile_rules("b", inputs, other, section)
    )
    assert "range users.age (a)" in {r.name for r in differ}


def test_user_sql_names_the_joined_columns() -> None:
    tables = ["users", "sales"]
    assert rewrite_sql("users.age >= 18 AND sales.price > 0", tables) == (
        "`users__age` >= 18 AND `sales__price` > 0"
    )
    assert rewrite_sql("abs(users.age) < 3 and other.x = 1", tables) == (
        "abs(`users__age`) < 3 and other.x = 1"
    )


def test_the_scoring_pass_profiles_scalars_array_positions_sparse_vectors_and_outputs() -> None:
    n = 1_000
    wide = 100
    rows = []
    for i in range(n):
        rows.append({"type": 0, "size": wide, "indices": [i % wide], "values": [1.0]})
    batch = pa.RecordBatch.from_pydict(
        {
            "t__x": pa.array(RNG.normal(size=n)),
            "t__arr": pa.array(list(RNG.normal(size=(n, 3))), pa.list_(pa.float64())),
            "t__vec": pa.array(rows, VECTOR_STRUCT),
        }
    )
    inputs = (
        MonitoredInput(FeatureInput("t__x", "t.x")),
        *(MonitoredInput(FeatureInput("t__arr", "t.arr", i, "array", 3)) for i in range(3)),
        MonitoredInput(FeatureInput("t__vec", "t.vec", kind="sparse", width=wide)),
    )
    monitor = RunMonitor((MonitoredModel("m", inputs, classes=("no", "yes")),), folder="")
    out = ScoreOutput(
        RNG.random(n), np.where(RNG.random(n) < 0.3, "yes", "no").astype(object), None
    )
    bodies = []
    for _ in range(2):  # two tasks
        tally = monitor.start()
        tally.observe(InputStack(batch), ["m"], [out])
        bodies.append(tally.body())
    profile = merge_bodies(monitor, bodies, source="test", created_at="now")["m"]
    assert list(profile.features) == ["t.x", "t.arr[0]", "t.arr[1]", "t.arr[2]", "t.vec"]
    assert profile.features["t.arr[1]"].count == 2 * n
    assert profile.features["t.vec"].nonzero == tuple([2 * n // wide] * wide)
    assert profile.predictions["prediction"].count == 2 * n
    label = profile.predictions["label"]
    assert sum(label.categories.values()) == 2 * n and set(label.categories) == {"no", "yes"}


def test_task_files_leave_out_known_edges_and_the_merge_restores_them() -> None:
    """Each task's body omits the bin edges the driver already holds; the merged profile has
    them back and counts exactly as one accumulator over every row."""
    x = RNG.normal(size=(2, 500))
    edges = tuple(np.quantile(RNG.normal(size=5_000), np.linspace(0, 1, 201)[1:-1]).tolist())
    prediction_edges = (0.25, 0.5, 0.75)
    monitor = RunMonitor(
        (
            MonitoredModel(
                "m",
                (MonitoredInput(FeatureInput("t__x", "t.x"), edges),),
                prediction_edges=prediction_edges,
            ),
        ),
        folder="",
    )
    bodies = []
    for part in x:  # two tasks
        tally = monitor.start()
        batch = pa.RecordBatch.from_pydict({"t__x": pa.array(part)})
        tally.observe(InputStack(batch), ["m"], [ScoreOutput(part * 0 + 0.4, None, None)])
        bodies.append(tally.body())
    assert all("edges" not in f for b in bodies for f in b["features"].values())
    assert "edges" not in bodies[0]["outputs"]["m"]["prediction"]
    profile = merge_bodies(monitor, bodies, source="test", created_at="now")["m"]
    whole = FeatureAccumulator("t.x", "numeric", "double", edges=edges)
    whole.add_numeric(x.ravel())
    assert profile.features["t.x"].edges == edges
    assert profile.features["t.x"].counts == whole.result().counts
    assert profile.predictions["prediction"].edges == prediction_edges
    assert profile.predictions["prediction"].counts == (0.0, 1000.0, 0.0, 0.0)


def test_input_rules_count_like_a_row_by_row_comparison() -> None:
    """Range, NaN and null-rate rules answer from an input's bounds and null count and only
    compare rows when those show a violation; the counts and first examples must be those
    of comparing every row, whatever the batch holds."""
    n = 2_000
    clean = RNG.normal(size=n)
    wide = clean * 10
    nan = np.where(RNG.random(n) < 0.01, np.nan, clean)
    inf = np.where(RNG.random(n) < 0.01, -np.inf, clean)
    null = RNG.random(n) < 0.02
    columns = {"a": clean, "b": wide, "c": nan, "d": inf, "e": np.where(null, np.nan, wide)}
    arrays = {k: pa.array(v) for k, v in columns.items()}
    arrays["e"] = pa.array(wide, mask=null)
    batch = pa.RecordBatch.from_pydict(arrays)
    rules = tuple(
        Rule(f"{kind} {name}", kind, "warn", feature=FeatureInput(name, name), low=-5, high=5)
        for name in columns
        for kind in ("range", "nan", "null_rate")
    )
    tally = RuleTally(rules)
    for _ in range(2):
        tally.add(InputStack(batch))
    for i, rule in enumerate(rules):
        x, missing = columns[rule.feature.ref], np.asarray(batch.column(rule.feature.ref).is_null())
        with np.errstate(invalid="ignore"):
            broken = {
                "range": (x < -5) | (x > 5),
                "nan": (np.isnan(x) & ~missing) | np.isinf(x),
                "null_rate": missing,
            }[rule.kind]
        assert tally.counts[i] == 2 * int(broken.sum()), rule.name
        if broken.any() and rule.kind != "null_rate":
            assert tally.examples[i] == repr(float(x[np.argmax(broken)])), rule.name
        else:
            assert tally.examples[i] == ("null" if broken.any() else None), rule.name
    assert sum(tally.counts[i] for i, r in enumerate(rules) if r.feature.ref == "a") == 0


NATIVE = native_bins.native_bins()


@pytest.mark.parametrize(
    "counting", ["sort", "numpy index", *(["native summary"] if NATIVE is not None else [])]
)
# The huge column overflows numpy's sums; the scoring task runs under np.errstate(all="ignore").
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_monitoring_then_rules_on_one_batch_match_whole_column_answers(
    counting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scoring task monitors a batch, then checks its rules on the same inputs: every
    input sorted into one buffer the task reuses (only its two ends kept for the rules),
    counted through an index, or, natively, every clean input of the batch summarized in one
    call (an input with NaN, infinity or an overflowing sum going the exact way alone). Over
    batches of changing size (within one native block and across several), and inputs with
    NaN, infinities, nulls, huge values and a constant, each input's profile must equal one
    accumulator over all its rows, and each range rule must count as a row-by-row comparison
    does."""
    monkeypatch.setattr(native_bins, "sorting_is_faster", lambda *_: counting == "sort")
    edges = tuple(np.linspace(-3, 3, 25).tolist())
    names = ("a", "b", "c", "d", "e", "f", "g")
    inputs = tuple(MonitoredInput(FeatureInput(n, f"t.{n}"), edges) for n in names)
    native = NATIVE if counting == "native summary" else None
    monitor = RunMonitor((MonitoredModel("m", inputs),), folder="", native=native)
    rules = tuple(
        Rule(f"range {n}", "range", "warn", feature=FeatureInput(n, f"t.{n}"), low=-2, high=2)
        for n in names
    )
    watch, checks = monitor.start(), RuleTally(rules)
    seen: dict[str, list[np.ndarray]] = {n: [] for n in names}
    nulls: list[np.ndarray] = []
    for size in (300, 1_000, 3, 500, 1_027):  # the buffers grow, then serve smaller batches
        clean = RNG.normal(size=size)
        null = RNG.random(size) < 0.05
        columns = {
            "a": clean,
            "b": clean * 10,
            "c": np.where(RNG.random(size) < 0.02, np.nan, clean),
            "d": np.where(RNG.random(size) < 0.02, np.inf, clean),
            "e": np.where(null, np.nan, clean * 3),
            "f": clean * 1e306,  # finite, but a sum can overflow
            "g": np.full(size, 0.75),
        }
        arrays = {k: pa.array(v) for k, v in columns.items()}
        arrays["e"] = pa.array(clean * 3, mask=null)
        stack = InputStack(pa.RecordBatch.from_pydict(arrays))
        watch.observe(stack, ["m"], [ScoreOutput(clean, None, None)])
        checks.add(stack)
        for name, values in columns.items():
            seen[name].append(values)
        nulls.append(null)
    for i, name in enumerate(names):
        values = np.concatenate(seen[name])
        whole = FeatureAccumulator(f"t.{name}", "numeric", "double", edges=edges)
        whole.add_numeric(values, np.concatenate(nulls) if name == "e" else None)
        got, want = watch.features[inputs[i].key].result(), whole.result()
        assert (got.rows, got.nulls, got.nan, got.inf, got.count) == (
            want.rows,
            want.nulls,
            want.nan,
            want.inf,
            want.count,
        ), name
        assert (got.counts, got.min, got.max) == (want.counts, want.min, want.max), name
        assert got.mean == pytest.approx(want.mean, rel=1e-12, abs=1e-15), name
        assert got.m2 == pytest.approx(want.m2, rel=1e-9), name
        with np.errstate(invalid="ignore"):
            broken = int(((values < -2) | (values > 2)).sum())
        assert checks.counts[i] == broken, name
    assert bool(watch.inputs) == (counting == "native summary")  # the way asked was taken


def test_monitoring_rows_flag_only_the_shifted_feature() -> None:
    base = np.column_stack([RNG.normal(size=20_000), RNG.normal(size=20_000)])
    training = _profile(a=base[:, 0], b=base[:, 1])
    inputs = (FeatureInput("t__a", "t.a"), FeatureInput("t__b", "t.b"))
    health = ModelHealth(
        "m", "1", inputs, training, default_thresholds={"psi": 0.2, "js": 0.1, "ks": 0.1}
    )
    current = {}
    for name, values in (("t.a", RNG.normal(size=20_000)), ("t.b", RNG.normal(0.5, 1, 20_000))):
        acc = FeatureAccumulator(name, "numeric", "double", edges=training.lookup(name).edges)  # type: ignore[union-attr]
        acc.add_numeric(values)
        current[name] = acc.result()
    rows = model_rows(health, Profile(features=current, rows=20_000), None, quarantined=3)
    flagged = {r.feature for r in rows if r.alert}
    assert flagged == {"t.b"}
    assert {r.metric for r in rows if r.baseline == "run"} >= {"rows", "null_rate", "mean"}
    assert ("quarantined", 3.0) in {(r.metric, r.value) for r in rows}
    assert alert_line(rows).startswith("Drift alert: model 'm': t.b ")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("monitoring: {table: mon, thresholds: {pis: 0.2}}", "'pis' is not a drift metric"),
        ("monitoring: {table: mon, thresholds: {js: 0}}", "js"),
        ("monitoring: {table: mon, on_alert: page}", "on_alert"),
        ("validation: {actions: {null_rate: quarantine}}", "cannot quarantine"),
        ("validation: {on_violation: quarantine}", "no 'quarantine' table"),
    ],
)
def test_bad_health_sections_are_one_line_spec_errors(
    tmp_path: Path, section: str, message: str
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: j\ntables: {t: {path: t}}\nsource: {table: t}\n"
        "models: [{name: m, path: m.txt, features: [x]}]\noutput: {path: out}\n" + section + "\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    text = str(caught.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("{name: b, path: m.txt, features: [x], shadow_of: c}", "which is not a model of the spec"),
        ("{name: b, path: m.txt, features: [x], canary_of: a, share: 1.5}", "share"),
        ("{name: b, path: m.txt, features: [x], canary_of: a, share: 0}", "share"),
        ("{name: b, path: m.txt, features: [x], canary_of: a}", "needs a share"),
        (
            "{name: b, path: m.txt, features: [x], canary_of: a, share: 0.6}, "
            "{name: c, path: m.txt, features: [x], canary_of: a, share: 0.5}",
            "over 100%",
        ),
        ("{name: b, path: m.txt, features: [x], shadow_of: a, share: 0.1}", "takes no share"),
        (
            "{name: b, path: m.txt, features: [x], shadow_of: a}, "
            "{name: c, path: m.txt, features: [x], shadow_of: b}",
            "no chains",
        ),
    ],
)
def test_bad_challengers_are_one_line_spec_errors(
    tmp_path: Path, models: str, message: str
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: j\ntables: {t: {path: t}}\nsource: {table: t, id_columns: [id]}\n"
        f"models: [{{name: a, path: m.txt, features: [x]}}, {models}]\noutput: {{path: out}}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_type_families() -> None:
    from batchscore.monitor.rules import type_family

    assert {type_family(t) for t in ("int8", "int64", "uint32")} == {"integer"}
    assert {type_family(t) for t in ("float", "double", "halffloat")} == {"floating"}
    assert type_family("bool") == "boolean" and type_family("string") == "string"
    assert type_family("decimal128(10, 2)") == "decimal"
    assert type_family("timestamp[us]") == "other"
