"""How models become kernels, structurally: no import cycles, an explicit converter table,
options passed down (never ambient), kernel abilities declared on the kernel classes."""

from __future__ import annotations

import json
import pickle
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from batchscore.errors import ModelError
from batchscore.kernels.affine import AffineKernel, TransformedKernel
from batchscore.kernels.base import Kernel, KernelKind
from batchscore.kernels.lightgbm_native import LightGBMNativeKernel
from batchscore.kernels.trees.kernel import TreeEnsembleKernel
from batchscore.models import ConvertOptions, compile_model, register
from tests import import_graph

# ---------------------------------------------------------------- the import graph


def test_converter_table_is_a_leaf_and_the_planner_imports_no_converter() -> None:
    graph = import_graph.graph()
    assert not any(
        m.startswith("batchscore.models") for m in graph["batchscore.models.converter_table"]
    )
    for module, targets in graph.items():
        if module.startswith("batchscore.plan"):
            assert not any(t.startswith("batchscore.models.converters") for t in targets), module


# ---------------------------------------------------------------- the converter table


class Gadget(LinearRegression):
    """A class registered only by this module's tests."""


def _first(obj: Any, *, model_name: str, n_features_hint: int | None, options: Any) -> Kernel:
    return AffineKernel(
        obj.coef_.reshape(-1, 1), np.array([obj.intercept_]), "identity", vector=True
    )


def _second(obj: Any, *, model_name: str, n_features_hint: int | None, options: Any) -> Kernel:
    return _first(obj, model_name=model_name, n_features_hint=n_features_hint, options=options)


def test_a_second_converter_for_a_class_is_refused_unless_replacing() -> None:
    register(Gadget)(_first)
    register(Gadget)(_first)  # the same converter again (a re-import) is harmless
    with pytest.raises(
        ModelError, match=r"Gadget already has the converter .*_first.*_second.*replace=True"
    ):
        register(Gadget)(_second)
    register(Gadget, replace=True)(_second)
    X = np.random.default_rng(0).normal(size=(50, 3))
    kernel = compile_model(Gadget().fit(X, X @ [1.0, 2.0, 3.0]), model_name="g")
    assert kernel.kind is KernelKind.AFFINE


def test_unknown_strategy_is_refused_when_the_options_are_made() -> None:
    with pytest.raises(ModelError, match="Unknown tree strategy 'fastest'"):
        ConvertOptions(strategy="fastest")


def test_options_reach_a_pipeline_final_step() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    model = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=4, random_state=0))
    model.fit(X, y)
    kernel = compile_model(model, model_name="p", options=ConvertOptions(strategy="traversal"))
    assert isinstance(kernel, TransformedKernel) and isinstance(kernel.inner, TreeEnsembleKernel)
    assert kernel.inner.strategy == "traversal"
    default = compile_model(model, model_name="p")
    assert isinstance(default, TransformedKernel) and default.inner.strategy != "traversal"


# ---------------------------------------------------------------- kernel abilities


def _lightgbm_native() -> LightGBMNativeKernel:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 5))
    booster = lgb.train(
        {"objective": "regression", "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, X[:, 0] * 2.0),
        num_boost_round=5,
    )
    return LightGBMNativeKernel(
        booster.model_to_string(),
        task="regression",
        classes=None,
        n_features=5,
        objective="regression",
        num_trees=booster.num_trees(),
    )


def test_lightgbm_ir_is_parsed_once_and_never_pickled() -> None:
    kernel = _lightgbm_native()
    before = len(pickle.dumps(kernel))
    ir = kernel.tree_ir()
    assert ir is not None and ir.n_trees == 5 and kernel.tree_ir() is ir
    assert len(pickle.dumps(kernel)) == before
    assert pickle.loads(pickle.dumps(kernel)).tree_ir().n_trees == 5


def test_abilities_are_declared_by_the_kernel_classes() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(100, 3))
    y = (X[:, 0] > 0).astype(int)
    svc = compile_model(LinearSVC().fit(X, y), model_name="s")
    assert svc.kind is KernelKind.AFFINE and not svc.supports_proba and svc.strategy == ""
    assert svc.tree_ir() is None
    native = _lightgbm_native()
    assert native.strategy == "native" and not native.supports_proba
    assert native.probe(np.random.default_rng(0), 16).shape == (16, 5)


def test_kernel_kind_reads_as_its_value() -> None:
    assert f"{KernelKind.TREE_ENSEMBLE}" == "tree_ensemble"
    assert json.dumps({"kernel": KernelKind.OPAQUE}) == '{"kernel": "opaque"}'
    assert KernelKind.AFFINE == "affine"
