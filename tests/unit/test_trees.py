"""Tree ensembles as arrays: every model kind x every strategy x datasets, against the model.

Parity is rtol 1e-9 in float64 with identical labels, on inputs with NaNs (and unseen
categories for the categorical models); the exit leaves of every strategy equal the native
model's own (`apply`, `pred_leaf`, or the per-tree output of HistGradientBoosting's predictors).
No Spark.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from batchscore.errors import ModelError
from batchscore.kernels.base import KernelKind
from batchscore.kernels.lightgbm_native import LightGBMNativeKernel
from batchscore.kernels.trees import (
    STRATEGIES,
    TreeEnsembleKernel,
    choose_strategy,
    node_goes_left,
)
from batchscore.kernels.trees.lightgbm_text import lightgbm_ir
from batchscore.models import compile_from_object
from batchscore.models.converters.sklearn_trees import to_ir
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

RTOL = 1e-9
COMPILED_RTOL = 1e-12
"""The compiled kernel adds leaf values in the libraries' own order: held to 1e-12."""
ARRAY_STRATEGIES = ("compiled", "traversal", "perfect", "gemm", "bitvector")
FLIGHTS = SHARED_DATA  # docs/datasets.md


# ---------------------------------------------------------------- data


@functools.cache
def dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "flights":
        from batchscore.datasets.morpheus import materialize_flights

        Xs, y = materialize_flights(FLIGHTS)
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(Xs.shape[0], 1500, replace=False))
        sub = sp.csr_matrix(Xs[rows])
        cols = np.argsort(-np.diff(sub.tocsc().indptr), kind="stable")[:40]
        return sub[:, np.sort(cols)].toarray(), np.asarray(y)[rows]
    loader = {"breast_cancer": load_breast_cancer, "wine": load_wine, "diabetes": load_diabetes}
    X, y = loader[name](return_X_y=True)
    return np.asarray(X, dtype=np.float64), y


def with_nans(X: np.ndarray) -> np.ndarray:
    out = X.copy()
    rng = np.random.default_rng(1)
    out[rng.random(out.shape) < 0.1] = np.nan
    out[:5] = 0.0
    return out


CLASSIFIERS: dict[str, Callable[[], Any]] = {
    "DecisionTreeClassifier": lambda: DecisionTreeClassifier(max_depth=7, random_state=0),
    "RandomForestClassifier": lambda: RandomForestClassifier(12, max_depth=8, random_state=0),
    "ExtraTreesClassifier": lambda: ExtraTreesClassifier(12, max_depth=6, random_state=0),
    "GradientBoostingClassifier": lambda: GradientBoostingClassifier(
        n_estimators=15, max_depth=3, random_state=0
    ),
    "HistGradientBoostingClassifier": lambda: HistGradientBoostingClassifier(
        max_iter=15, random_state=0
    ),
    "LGBMClassifier": lambda: lgb.LGBMClassifier(
        n_estimators=15, num_leaves=15, verbose=-1, n_jobs=1
    ),
}
REGRESSORS: dict[str, Callable[[], Any]] = {
    "DecisionTreeRegressor": lambda: DecisionTreeRegressor(max_depth=7, random_state=0),
    "RandomForestRegressor": lambda: RandomForestRegressor(12, max_depth=8, random_state=0),
    "ExtraTreesRegressor": lambda: ExtraTreesRegressor(12, max_depth=6, random_state=0),
    "GradientBoostingRegressor": lambda: GradientBoostingRegressor(
        n_estimators=15, max_depth=3, random_state=0
    ),
    "HistGradientBoostingRegressor": lambda: HistGradientBoostingRegressor(
        max_iter=15, random_state=0
    ),
    "HistGradientBoostingRegressor-poisson": lambda: HistGradientBoostingRegressor(
        loss="poisson", max_iter=15, random_state=0
    ),
    "LGBMRegressor": lambda: lgb.LGBMRegressor(
        n_estimators=15, num_leaves=15, verbose=-1, n_jobs=1
    ),
    "LGBMRegressor-poisson": lambda: lgb.LGBMRegressor(
        objective="poisson", n_estimators=15, num_leaves=15, verbose=-1, n_jobs=1
    ),
}
CLASSIFIER_DATA = ("breast_cancer", "wine", "flights")
REGRESSOR_DATA = ("diabetes",)
CASES = [(m, d) for m in CLASSIFIERS for d in CLASSIFIER_DATA] + [
    (m, d) for m in REGRESSORS for d in REGRESSOR_DATA
]


@functools.cache
def fitted(model: str, data: str) -> Any:
    X, y = dataset(data)
    factory = CLASSIFIERS.get(model) or REGRESSORS[model]
    return factory().fit(X, y)


def accepts_nan(model: str) -> bool:
    return not model.startswith("GradientBoosting")


def check_parity(obj: Any, kernel: Any, X: np.ndarray, *, csr: bool = False) -> None:
    """`csr`: the kernel scores the CSR form (HistGradientBoosting refuses CSR itself)."""
    got = kernel.score(sp.csr_matrix(X) if csr else X)
    rtol = COMPILED_RTOL if kernel.strategy == "compiled" else RTOL
    atol = 1e-15 if rtol == COMPILED_RTOL else 1e-12
    if kernel.classes is None:
        want = np.asarray(obj.predict(X), dtype=np.float64)
        np.testing.assert_allclose(got.prediction, want, rtol=rtol, atol=atol)
        return
    labels = np.asarray([str(v) for v in obj.predict(X)], dtype=object)
    assert np.array_equal(got.label, labels)
    np.testing.assert_allclose(got.probability, obj.predict_proba(X), rtol=rtol, atol=atol)


def native_leaves(obj: Any, X: np.ndarray) -> np.ndarray | None:
    """Exit leaves in the library's numbering, (n, T); None where the library has no `apply`."""
    if isinstance(obj, (lgb.LGBMModel, lgb.Booster)):
        booster = obj.booster_ if isinstance(obj, lgb.LGBMModel) else obj
        return np.asarray(booster.predict(X, pred_leaf=True)).reshape(X.shape[0], -1)
    if not hasattr(obj, "apply"):
        return None
    leaves = np.asarray(obj.apply(X))
    return leaves.reshape(X.shape[0], -1)


# ---------------------------------------------------------------- the parity matrix


@pytest.mark.parametrize("strategy", ARRAY_STRATEGIES)
@pytest.mark.parametrize(("model", "data"), CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_strategy_matches_model(model: str, data: str, strategy: str) -> None:
    obj = fitted(model, data)
    try:
        kernel = compile_from_object("m", obj, strategy=strategy).kernel
    except ModelError as exc:  # perfect refuses deep trees, clearly
        assert strategy == "perfect" and "depth" in str(exc)
        return
    assert isinstance(kernel, TreeEnsembleKernel) and kernel.strategy == strategy
    X = dataset(data)[0]
    check_parity(obj, kernel, X)
    check_parity(obj, kernel, X, csr=True)
    if accepts_nan(model):
        check_parity(obj, kernel, with_nans(X))
    for Xi in (X, with_nans(X)) if accepts_nan(model) else (X,):
        want = native_leaves(obj, Xi)
        if want is not None:
            assert np.array_equal(kernel.native_leaves(Xi), want)


@pytest.mark.parametrize("model", ["LGBMClassifier", "RandomForestClassifier"])
def test_native_strategy_is_the_model(model: str) -> None:
    obj = fitted(model, "wine")
    kernel = compile_from_object("m", obj, strategy="native").kernel
    assert isinstance(kernel, TreeEnsembleKernel) and kernel.strategy == "native"
    check_parity(obj, kernel, with_nans(dataset("wine")[0]))
    assert "strategy native" in kernel.describe()


def test_hist_gradient_boosting_leaves_per_tree() -> None:
    """HGB has no apply(): compare every tree's output with its own predictor's instead."""
    obj = fitted("HistGradientBoostingClassifier", "wine")
    X = with_nans(dataset("wine")[0])
    kernel = compile_from_object("m", obj, strategy="bitvector").kernel
    known, f_idx_map = obj._bin_mapper.make_known_categories_bitsets()
    leaves = kernel.leaves(X)
    predictors = [p for iteration in obj._predictors for p in iteration]
    for t, (tree, predictor) in enumerate(zip(kernel.ir.trees, predictors, strict=True)):
        want = predictor.predict(X, known, f_idx_map, 1)
        np.testing.assert_array_equal(tree.leaf_value[leaves[:, t], 0], want)


# ---------------------------------------------------------------- categorical + missing


def categorical_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 800
    cat = rng.integers(0, 8, n).astype(np.float64)
    num = rng.normal(size=(n, 3))
    num[rng.random((n, 3)) < 0.1] = np.nan
    logit = np.where(np.isin(cat, [1, 3, 4]), 1.5, -1.0) + np.nan_to_num(num[:, 0])
    return np.c_[cat, num], (logit + rng.normal(size=n) > 0).astype(int)


def unseen(X: np.ndarray) -> np.ndarray:
    """Unseen, negative, non-integer, huge and missing categories, zeros and tiny values."""
    out = X.copy()
    codes = [8, 9, 31, 32, 64, 300, -1, -0.5, 2.5, 1e10, np.nan, 0.0, 1e-40]
    out[: len(codes), 0] = codes
    out[len(codes) : 2 * len(codes), 1] = [0.0, -0.0, 1e-40, -1e-40] + [np.nan] * 9
    return out


CATEGORICAL_MODELS: dict[str, Callable[[], Any]] = {
    "HistGradientBoostingClassifier": lambda: HistGradientBoostingClassifier(
        categorical_features=[0], max_iter=20, random_state=0
    ),
    "HistGradientBoostingRegressor": lambda: HistGradientBoostingRegressor(
        categorical_features=[0], max_iter=20, random_state=0
    ),
    "LGBMClassifier": lambda: lgb.LGBMClassifier(
        n_estimators=20, num_leaves=8, min_data_per_group=5, cat_smooth=1, verbose=-1, n_jobs=1
    ),
    "LGBMClassifier-zero-as-missing": lambda: lgb.LGBMClassifier(
        n_estimators=20, num_leaves=8, zero_as_missing=True, verbose=-1, n_jobs=1
    ),
    "LGBMRegressor": lambda: lgb.LGBMRegressor(
        n_estimators=20, num_leaves=8, min_data_per_group=5, verbose=-1, n_jobs=1
    ),
}


@pytest.mark.parametrize("strategy", ARRAY_STRATEGIES)
@pytest.mark.parametrize("model", list(CATEGORICAL_MODELS))
def test_categorical_and_missing(model: str, strategy: str) -> None:
    X, y = categorical_data()
    obj = CATEGORICAL_MODELS[model]()
    if model.startswith("LGBM"):
        obj.fit(X, y if "Classifier" in model else y + X[:, 0], categorical_feature=[0])
    else:
        obj.fit(X, y if "Classifier" in model else y + X[:, 0])
    kernel = compile_from_object("m", obj, strategy=strategy).kernel
    assert isinstance(kernel, TreeEnsembleKernel)
    assert kernel.ir.has_categorical or "zero" in model
    Xu = unseen(X)
    check_parity(obj, kernel, Xu)
    want = native_leaves(obj, Xu)
    if want is not None:
        assert np.array_equal(kernel.native_leaves(Xu), want)


def test_lightgbm_binary_booster_and_multiclass_ova() -> None:
    X, y = dataset("wine")
    booster = lgb.train(
        {"objective": "multiclassova", "num_class": 3, "verbose": -1, "num_leaves": 7},
        lgb.Dataset(X, y),
        num_boost_round=10,
    )
    kernel = compile_from_object("m", booster, strategy="bitvector").kernel
    assert isinstance(kernel, TreeEnsembleKernel)
    np.testing.assert_allclose(
        kernel.score(with_nans(X)).probability, booster.predict(with_nans(X)), rtol=RTOL
    )


# ---------------------------------------------------------------- random forests, fuzzed


@pytest.mark.parametrize("seed", range(6))
def test_random_forests_random_data(seed: int) -> None:
    """Hypothesis-style: random shapes, depths, ties and duplicated values, every strategy."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(50, 300)), int(rng.integers(1, 8))
    X = np.round(rng.normal(size=(n, d)), int(rng.integers(0, 3)))
    y = rng.integers(0, int(rng.integers(2, 5)), n)
    obj = RandomForestClassifier(
        int(rng.integers(1, 10)), max_depth=int(rng.integers(1, 9)), random_state=seed
    ).fit(X, y)
    probe = np.vstack([X, np.round(rng.normal(size=(50, d)) * 3, 1)])
    probe[rng.random(probe.shape) < 0.05] = np.nan
    for strategy in ARRAY_STRATEGIES:
        kernel = compile_from_object("m", obj, strategy=strategy).kernel
        check_parity(obj, kernel, probe)
        assert np.array_equal(kernel.native_leaves(probe), obj.apply(probe))


# ---------------------------------------------------------------- IR, choice, refusals


def test_node_test_is_a_function_of_one_feature() -> None:
    obj = lgb.LGBMClassifier(n_estimators=3, num_leaves=4, verbose=-1, n_jobs=1)
    X, y = categorical_data()
    obj.fit(X, y, categorical_feature=[0])
    ir = lightgbm_ir(
        obj.booster_.model_to_string(), task="binary", classes=("0", "1"), source="LGBM"
    )
    tree = ir.trees[0]
    values = np.array([np.nan, 0.0, -1.0, 1.0, 2.0, 3.0, 100.0])
    got = node_goes_left(ir, tree, 0, values)
    assert got.dtype == bool and got.shape == values.shape


def test_numpy_strategy_rule() -> None:
    """The numpy strategy picked when no C compiler is on the driver (BATCHSCORE_CC=none)."""
    shallow = to_ir(fitted("GradientBoostingClassifier", "breast_cancer"))
    assert choose_strategy(shallow) == "gemm"
    deep = to_ir(DecisionTreeRegressor(random_state=0).fit(*dataset("diabetes")))
    medium = to_ir(fitted("RandomForestClassifier", "wine"))
    assert deep.max_depth > 10 and medium.max_depth <= 8
    assert choose_strategy(medium, 10_000) == "perfect"
    assert choose_strategy(deep, 100) == "traversal"
    assert choose_strategy(shallow, 10) == "perfect"  # tiny batches: no matmul set-up
    kernel = compile_from_object("m", fitted("RandomForestClassifier", "wine")).kernel
    assert kernel.kind is KernelKind.TREE_ENSEMBLE and "strategy compiled" in kernel.describe()


def test_without_a_compiler_sklearn_uses_numpy_and_lightgbm_its_own_predictor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCHSCORE_CC", "none")
    forest = compile_from_object("m", fitted("RandomForestClassifier", "wine")).kernel
    assert isinstance(forest, TreeEnsembleKernel) and forest.strategy == "perfect"
    assert "not compiled: no C compiler was found on the driver" in forest.describe()
    obj = fitted("LGBMClassifier", "breast_cancer")
    assert isinstance(compile_from_object("m", obj).kernel, LightGBMNativeKernel)
    with pytest.raises(ModelError, match="strategy: compiled, but no C compiler"):
        compile_from_object("m", obj, strategy="compiled")


def test_lightgbm_default_is_compiled_and_strategy_forces_others() -> None:
    obj = fitted("LGBMClassifier", "breast_cancer")
    kernel = compile_from_object("m", obj).kernel
    assert isinstance(kernel, TreeEnsembleKernel) and kernel.strategy == "compiled"
    native = compile_from_object("m", obj, strategy="native").kernel
    assert isinstance(native, TreeEnsembleKernel) and native.strategy == "native"
    assert isinstance(native.native, LightGBMNativeKernel)
    forced = compile_from_object("m", obj, strategy="traversal").kernel
    assert "strategy traversal: forced by the spec" in forced.describe()


def test_unknown_strategy_and_non_tree_models_are_refused() -> None:
    obj = fitted("RandomForestClassifier", "wine")
    with pytest.raises(ModelError, match="Unknown tree strategy 'quick'"):
        compile_from_object("m", obj, strategy="quick")
    from sklearn.linear_model import Ridge

    X, y = dataset("diabetes")
    with pytest.raises(ModelError, match="strategy applies to tree ensembles"):
        compile_from_object("m", Ridge().fit(X, y), strategy="gemm")


def test_linear_tree_is_refused_for_array_strategies_and_native_otherwise() -> None:
    X, y = dataset("diabetes")
    obj = lgb.LGBMRegressor(n_estimators=5, linear_tree=True, verbose=-1, n_jobs=1).fit(X, y)
    with pytest.raises(ModelError, match="linear_tree"):
        compile_from_object("m", obj, strategy="bitvector")
    kernel = compile_from_object("m", obj, strategy="native").kernel
    np.testing.assert_allclose(kernel.score(X).prediction, obj.predict(X), rtol=RTOL)


def test_kernel_pickles_small_without_caches() -> None:
    obj = fitted("RandomForestClassifier", "breast_cancer")
    kernel = compile_from_object("m", obj, strategy="bitvector").kernel
    X = dataset("breast_cancer")[0]
    before = kernel.score(X)
    clone = pickle.loads(pickle.dumps(kernel))
    assert np.array_equal(clone.score(X).probability, before.probability)
    assert len(pickle.dumps(kernel)) < len(pickle.dumps(obj))


def test_empty_batch() -> None:
    kernel = compile_from_object("m", fitted("LGBMClassifier", "wine"), strategy="gemm").kernel
    out = kernel.score(np.zeros((0, 13)))
    assert out.probability is not None and out.probability.shape == (0, 3)


def test_strategies_listed() -> None:
    assert set(STRATEGIES) == {"native", *ARRAY_STRATEGIES}
    assert STRATEGIES[0] == "compiled"
