"""Compiled trees: every code form, the disk cache and its integrity, threads, executors.

The parity matrix over every tree family and dataset (labels identical, rtol 1e-12, NaN,
sparse input, exit leaves) is tests/unit/test_trees.py with the `compiled` strategy; this file
covers what is specific to compiled code; tests/spark/test_compiled_trees_spark.py covers
Spark executors.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)

from batchscore.kernels.trees import TreeEnsembleKernel
from batchscore.kernels.trees.compiled import cache, codegen, forest, toolchain
from batchscore.models import compile_from_object
from tests.unit.test_trees import categorical_data, check_parity, unseen

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test compiles into its own cache folder and starts with no loaded library."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    monkeypatch.setattr(forest, "_HANDLES", {})
    return folder


def data(n: int = 3000, d: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] ** 2 + rng.normal(size=n) > 1).astype(int)
    return X, y


def with_missing(X: np.ndarray) -> np.ndarray:
    out = X.copy()
    rng = np.random.default_rng(3)
    out[rng.random(out.shape) < 0.08] = np.nan
    out[:7] = 0.0
    out[7:9] = 1e-40
    return out


def compiled(obj: Any) -> TreeEnsembleKernel:
    kernel = compile_from_object("m", obj).kernel
    assert isinstance(kernel, TreeEnsembleKernel) and kernel.strategy == "compiled"
    assert kernel.compiled is not None
    return kernel


# ---------------------------------------------------------------- code forms


def test_each_code_form_matches_the_model() -> None:
    """Fully grown trees -> tables, depth-limited forests -> branchless, LightGBM -> branchy."""
    X, y = data(n=12_000)
    Xm = with_missing(X[:3000])
    cases = [
        (RandomForestClassifier(4, random_state=0).fit(X, y), codegen.TABLE),
        (RandomForestRegressor(8, max_depth=6, random_state=0).fit(X, X[:, 0]), "branchless"),
        (lgb.LGBMClassifier(n_estimators=40, verbose=-1, n_jobs=1).fit(X, y), codegen.BRANCHY),
    ]
    for obj, form in cases:
        kernel = compiled(obj)
        assert kernel.compiled is not None and kernel.compiled.info.forms[form] > 0
        check_parity(obj, kernel, Xm)


def test_branchless_nan_and_infinity_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN goes its node's way through the scratch copies (-inf / +inf), in blocks with and
    without NaN, infinities in the data stay what they are, and ragged rows (not a multiple
    of INTERLEAVE) take the single-row walk. Forests trained without NaN send it to the
    child with more samples (left at some nodes, right at others); classifier leaves hold one
    value per class. A forest trained with NaN has "missing apart" nodes (+inf, NaN right):
    those trees stay branchy, and score the same."""
    X, y = data(n=12_000)
    Xm = with_missing(X)
    rows = codegen.block_rows(X.shape[1])
    probe = X[: 3 * rows + 5].copy()  # block 0 clean, block 1 with NaN, block 2 clean, a tail
    probe[rows : 2 * rows] = Xm[rows : 2 * rows]
    infinite = probe.copy()  # scikit-learn refuses infinities: checked against branchy code
    infinite[2 * rows : 2 * rows + 40 : 2, :3] = np.inf
    infinite[2 * rows + 1 : 2 * rows + 40 : 2, :3] = -np.inf
    models = [
        RandomForestClassifier(12, max_depth=8, random_state=0).fit(X, y),
        RandomForestRegressor(12, max_depth=8, random_state=0).fit(X, X[:, 0]),
    ]
    for obj in models:
        kernel = compiled(obj)
        assert kernel.compiled is not None and kernel.compiled.info.forms["branchless"] >= 10
        nan_left = np.concatenate([t.nan_left for t in kernel.ir.trees if t.n_internal])
        assert nan_left.any() and not nan_left.all()
        check_parity(obj, kernel, probe)
        method = getattr(obj, "predict_proba", obj.predict)
        out = kernel.score(probe, proba=True)
        got = out.probability if out.probability is not None else out.prediction
        assert np.array_equal(got, method(probe))  # bit for bit, not only within rtol
        walked = kernel.compiled.sums(infinite)
        with monkeypatch.context() as m:
            m.setattr(codegen, "BRANCHLESS_MIN_LEAVES", 10**9)
            m.setattr(forest, "_HANDLES", {})
            plain = compiled(obj)
        assert plain.compiled is not None and plain.compiled.info.forms["branchless"] == 0
        assert np.array_equal(walked, plain.compiled.sums(infinite))
    trained_with_nan = RandomForestClassifier(6, max_depth=8, random_state=0).fit(Xm, y)
    kernel = compiled(trained_with_nan)
    apart = [(np.isposinf(t.threshold) & ~t.nan_left).any() for t in kernel.ir.trees]
    assert any(apart)
    assert not any(
        codegen.is_branchless(t) for t, a in zip(kernel.ir.trees, apart, strict=True) if a
    )
    check_parity(trained_with_nan, kernel, probe)


def test_table_form_with_categorical_and_zero_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Categorical bitsets and zero-as-missing nodes in the table form too."""
    monkeypatch.setattr(codegen, "BRANCHY_MAX_NODES", 0)
    monkeypatch.setattr(codegen, "BRANCHLESS_MAX_DEPTH", 0)
    X, y = categorical_data()
    models = [
        lgb.LGBMClassifier(
            n_estimators=20, num_leaves=8, min_data_per_group=5, verbose=-1, n_jobs=1
        ).fit(X, y, categorical_feature=[0]),
        lgb.LGBMClassifier(
            n_estimators=20, num_leaves=8, zero_as_missing=True, verbose=-1, n_jobs=1
        ).fit(X, y),
        HistGradientBoostingClassifier(categorical_features=[0], max_iter=20).fit(X, y),
    ]
    for obj in models:
        kernel = compiled(obj)
        assert kernel.compiled is not None
        assert kernel.compiled.info.forms == {"branchy": 0, "branchless": 0, "table": 20}
        check_parity(obj, kernel, unseen(X))


def test_multiclass_lightgbm_with_nan_and_many_rows() -> None:
    """Several blocks of rows and a ragged last block; 4 classes = 4 trees per iteration."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5000, 6))
    y = np.digitize(X[:, 0] + 0.5 * X[:, 1], [-1, 0, 1])
    obj = lgb.LGBMClassifier(n_estimators=30, num_leaves=31, verbose=-1, n_jobs=1).fit(X, y)
    kernel = compiled(obj)
    probe = with_missing(rng.normal(size=(codegen.BLOCK_ROWS * 3 + 17, 6)))
    check_parity(obj, kernel, probe)
    booster = obj.booster_
    want = booster.predict(probe, raw_score=True)
    np.testing.assert_array_equal(kernel.raw(probe), want)  # the same additions, in order


def test_threads_give_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = data(n=4000)
    obj = lgb.LGBMClassifier(n_estimators=30, verbose=-1, n_jobs=1).fit(X, y)
    kernel = compiled(obj)
    probe = with_missing(np.random.default_rng(5).normal(size=(20_000, 10)))
    one = kernel.score(probe)
    monkeypatch.setenv("BATCHSCORE_THREADS", "2")
    two = kernel.score(probe)
    assert np.array_equal(one.probability, two.probability)


def test_a_model_that_reads_few_of_many_inputs() -> None:
    """Only the columns the trees read are gathered (sparse and dense inputs alike)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(2)
    X = sp.random(2000, 500, density=0.02, random_state=2, format="csr")
    y = (np.asarray(X[:, :5].sum(axis=1)).ravel() > 0.05).astype(int)
    obj = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1, n_jobs=1).fit(X, y)
    kernel = compiled(obj)
    assert kernel.compiled is not None and kernel.compiled.used is not None
    assert len(kernel.compiled.used) < 500
    np.testing.assert_allclose(
        kernel.score(X).probability, obj.predict_proba(X), rtol=1e-12, atol=1e-15
    )
    dense = X.toarray()
    np.testing.assert_allclose(
        kernel.score(dense).probability, obj.predict_proba(dense), rtol=1e-12, atol=1e-15
    )
    del rng


@pytest.mark.parametrize(
    "make",
    [
        lambda: lgb.LGBMRegressor(n_estimators=15, num_leaves=7, verbose=-1, n_jobs=1),
        lambda: RandomForestRegressor(n_estimators=8, max_depth=6, random_state=0),
        lambda: HistGradientBoostingClassifier(max_iter=10, random_state=0),
    ],
    ids=["lightgbm-rule", "float32-rule", "float64-rule"],
)
def test_dense_input_is_gathered_in_compiled_code(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dense matrix goes in whole and the compiled code reads the trees' columns from it
    (every input rule; C- and Fortran-ordered input; one thread and two)."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 60))
    y = X[:, 3] - 2 * X[:, 41] + (X[:, 17] > 0)
    model = make()
    obj = model.fit(X, y > 0 if isinstance(model, HistGradientBoostingClassifier) else y)
    kernel = compiled(obj)
    assert kernel.compiled is not None and kernel.compiled.used is not None
    assert len(kernel.compiled.used) < 60
    probe = with_missing(rng.normal(size=(12_000, 60)))
    own = obj.predict_proba(probe) if hasattr(obj, "predict_proba") else obj.predict(probe)
    got = kernel.score(probe)
    mine = got.probability if got.probability is not None else got.prediction
    np.testing.assert_allclose(mine, own, rtol=1e-12, atol=1e-15)
    assert np.array_equal(kernel.score(np.asfortranarray(probe)).prediction, got.prediction)
    monkeypatch.setenv("BATCHSCORE_THREADS", "2")
    assert np.array_equal(kernel.score(probe).prediction, got.prediction, equal_nan=True)


def test_pickled_kernel_scores_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """What executors get: the library's bytes; with compiling forbidden it still scores."""
    X, y = data()
    obj = lgb.LGBMClassifier(n_estimators=20, verbose=-1, n_jobs=1).fit(X, y)
    kernel = compiled(obj)
    blob = pickle.dumps(kernel)
    monkeypatch.setattr(forest, "_HANDLES", {})
    monkeypatch.setenv(toolchain.EXECUTOR_ENV, "1")
    monkeypatch.setenv(toolchain.CC_ENV, "/nonexistent/cc")
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.score(X).probability, kernel.score(X).probability)
    assert clone.compiled.sha256 in forest._HANDLES
    with pytest.raises(toolchain.CompileError, match="executors never compile"):
        toolchain.build_shared_library(toolchain.Compiler(("cc",), "x"), ("int x;",))


def test_a_library_from_another_platform_falls_back_to_numpy() -> None:
    X, y = data()
    obj = RandomForestClassifier(5, max_depth=5, random_state=0).fit(X, y)
    kernel = compiled(obj)
    assert kernel.compiled is not None
    kernel.compiled.platform = "plan9-mips"
    forest._HANDLES.clear()
    check_parity(obj, kernel, with_missing(X))
    assert "plan9-mips" in kernel._compiled_broken


# ---------------------------------------------------------------- the cache


def entries(folder: Path) -> list[Path]:
    return sorted((folder / "trees").glob("*.so"))


def test_warm_compile_is_a_cache_hit(private_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = data()
    obj = lgb.LGBMClassifier(n_estimators=25, verbose=-1, n_jobs=1).fit(X, y)
    cold = compiled(obj)
    assert cold.compiled is not None and not cold.compiled.info.cache_hit
    assert len(entries(private_cache)) == 1

    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a warm compile must not run the compiler")

    monkeypatch.setattr(toolchain, "build_shared_library", no_compiler)
    warm = compiled(obj)
    assert warm.compiled is not None and warm.compiled.info.cache_hit
    assert warm.compiled.sha256 == cold.compiled.sha256
    assert "cached (cold compile took" in warm.describe()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "foreign-json", "other-compiler"])
def test_a_damaged_or_foreign_cache_entry_is_recompiled(private_cache: Path, damage: str) -> None:
    X, y = data()
    obj = lgb.LGBMClassifier(n_estimators=15, verbose=-1, n_jobs=1).fit(X, y)
    first = compiled(obj)
    (so,) = entries(private_cache)
    meta_path = so.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    if damage == "truncated":
        so.write_bytes(so.read_bytes()[:1000])
    elif damage == "flipped":
        raw = bytearray(so.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        so.write_bytes(bytes(raw))
    elif damage == "foreign-json":
        meta_path.write_text("[1, 2, 3]")
    else:
        meta["compiler"] = "gcc (Other) 1.0 | -O2"
        meta_path.write_text(json.dumps(meta))
    forest._HANDLES.clear()
    again = compiled(obj)
    assert again.compiled is not None and not again.compiled.info.cache_hit
    assert again.compiled.sha256 == first.compiled.sha256 if first.compiled else False
    check_parity(obj, again, X)
    assert json.loads(meta_path.read_text())["compiler"] == toolchain.find_compiler().identity  # type: ignore[union-attr]


def test_cache_key_names_the_compiler_and_generator() -> None:
    a = cache.cache_key("f", "gcc 12", codegen.CODEGEN_VERSION)
    assert a != cache.cache_key("f", "gcc 13", codegen.CODEGEN_VERSION)
    assert a != cache.cache_key("f", "gcc 12", codegen.CODEGEN_VERSION + "x")


def test_cache_clear(private_cache: Path) -> None:
    X, _y = data()
    compiled(lgb.LGBMRegressor(n_estimators=5, verbose=-1, n_jobs=1).fit(X, X[:, 0]))
    assert entries(private_cache)
    assert cache.clear() == 2
    assert not entries(private_cache)


# ---------------------------------------------------------------- literals


@pytest.mark.parametrize("value", [0.1, -2.5e-300, 1e308, 5e-324, 0.0, -0.0, np.inf, -np.inf])
def test_c_double_is_exact(value: float) -> None:
    text = codegen.c_double(value)
    if np.isinf(value):
        assert "INFINITY" in text
    else:
        assert float.fromhex(text) == value


# ---------------------------------------------------------------- factorized fact side


@pytest.mark.parametrize("name", ["lightgbm", "lightgbm_multi", "histgb", "forest"])
def test_compiled_fact_side_equals_numpy_fact_side(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factorized fact side walks its trees with word tests (compiled) and ANDs masks
    (numpy): the same exit leaves, so the same bits; and both equal the model."""
    from batchscore.kernels.trees.factorized import FactorizedTreeKernel
    from tests.spark.test_factorize_trees import MODELS, N_FEATURES, _data, _scored_factorized

    model = MODELS[0][name]
    kernel = compile_from_object(name, model, strategy="traversal").kernel
    assert isinstance(kernel, TreeEnsembleKernel)
    rng = np.random.default_rng(4)
    owner = rng.integers(0, 3, N_FEATURES)
    X = _data(5, n=400)[0]
    compiled_side, joined, X_seen = _scored_factorized(kernel, X.copy(), owner, 2, 4)
    assert isinstance(compiled_side, FactorizedTreeKernel)
    assert compiled_side.fact_forest is not None
    assert "compiled: walks the split trees" in compiled_side.describe()
    monkeypatch.setenv(toolchain.CC_ENV, "none")
    numpy_side, joined2, _ = _scored_factorized(kernel, X.copy(), owner, 2, 4)
    assert isinstance(numpy_side, FactorizedTreeKernel) and numpy_side.fact_forest is None
    np.testing.assert_array_equal(joined, joined2)
    a, b = compiled_side.score(joined), numpy_side.score(joined)
    for what in ("prediction", "probability"):
        if getattr(a, what) is not None:
            np.testing.assert_array_equal(getattr(a, what), getattr(b, what))
    want = kernel.score(X_seen)
    if want.probability is not None:
        np.testing.assert_allclose(a.probability, want.probability, rtol=1e-9, atol=1e-15)
    else:
        np.testing.assert_allclose(a.prediction, want.prediction, rtol=1e-9, atol=1e-12)
