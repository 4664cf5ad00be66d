"""scikit-learn tree models -> TreeEnsembleKernel (the tree-ensemble IR plus a strategy).

How each family compares (checked against scikit-learn 1.9's Cython predictors):
- DecisionTree*, ExtraTree*, RandomForest*, ExtraTrees*, GradientBoosting*: the input is cast to
  float32 first (`validate_data(dtype=float32)`), then `x <= threshold` with a float64
  threshold; NaN follows `tree_.missing_go_to_left` (GradientBoosting refuses NaN itself).
  Classifier leaves are `value / value.sum()` as predict_proba normalises them; forests average.
- GradientBoosting*: raw = init (a constant from the Dummy init estimator) + sum of
  learning_rate * leaf; labels are `raw >= 0` (binary) or argmax(raw).
- HistGradientBoosting*: float64 input, `x <= num_threshold`, NaN -> missing_go_to_left.
  Categorical features are first ordinal-encoded (unknown -> NaN -> the missing direction), so
  the IR's categorical node works on the raw category values: in the left set -> left, another
  known category -> right, anything else (unseen, negative, non-integer) -> the missing side.
  Labels are `raw > 0` (binary) or argmax(raw).

What the IR cannot express (multi-output trees, a custom init estimator, raw categories that are
not small non-negative integers, an unknown loss link) is scored by the model itself (opaque).
"""

from __future__ import annotations

from typing import Any

import numpy as np
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
from sklearn.tree import (
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)

from batchscore.kernels.base import Kernel, Task
from batchscore.kernels.trees.ir import (
    LabelRule,
    Link,
    Tree,
    TreeEnsemble,
    UnsupportedTree,
    bitset_members,
    bitset_rows,
    build_tree,
)
from batchscore.kernels.trees.kernel import make_tree_kernel, refuse_or_native
from batchscore.models.converter_table import DEFAULT_OPTIONS, ConvertOptions, register
from batchscore.models.converters.opaque import to_opaque

SINGLE_TREES = (
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)
FORESTS = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)
BOOSTED = (GradientBoostingClassifier, GradientBoostingRegressor)
HIST = (HistGradientBoostingClassifier, HistGradientBoostingRegressor)
MAX_CATEGORY = 1 << 16


@register(*SINGLE_TREES, *FORESTS, *BOOSTED, *HIST)
def sklearn_trees(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    opaque = to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)

    def native() -> Kernel:
        return opaque

    try:
        ir = to_ir(obj)
    except UnsupportedTree as exc:
        return refuse_or_native(
            str(exc),
            native,
            model_name=model_name,
            what=type(obj).__name__,
            strategy=options.strategy,
        )
    return make_tree_kernel(ir, native, model_name=model_name, strategy=options.strategy)


def to_ir(obj: Any) -> TreeEnsemble:
    """The IR of a fitted scikit-learn tree model; UnsupportedTree when it cannot be exact."""
    if isinstance(obj, HIST):
        return _hist(obj)
    if isinstance(obj, BOOSTED):
        return _boosted(obj)
    estimators = [obj] if isinstance(obj, SINGLE_TREES) else list(obj.estimators_)
    if int(getattr(obj, "n_outputs_", 1)) != 1:
        raise UnsupportedTree("multi-output trees are not supported")
    classes = _classes(obj)
    trees = tuple(_sk_tree(e.tree_, classifier=classes is not None) for e in estimators)
    width = trees[0].leaf_value.shape[1]
    return TreeEnsemble(
        trees=trees,
        n_features=int(obj.n_features_in_),
        n_outputs=width,
        base_score=np.zeros(width),
        link="identity",
        task=_task(classes),
        classes=classes,
        source=type(obj).__name__,
        divisor=float(len(estimators)) if isinstance(obj, FORESTS) else 1.0,
        input_rule="float32",
    )


def _sk_tree(t: Any, *, classifier: bool, scale: float = 1.0, output: int = 0) -> Tree:
    left, right = t.children_left, t.children_right
    is_leaf = left == -1
    if classifier:
        v = t.value[:, 0, :].astype(np.float64)
        total = v.sum(axis=1, keepdims=True)
        values = v / np.where(total == 0.0, 1.0, total)
    else:
        values = t.value[:, 0, 0].astype(np.float64) * scale if scale != 1.0 else t.value[:, 0, 0]
    go_left = np.asarray(getattr(t, "missing_go_to_left", np.zeros(t.node_count)), dtype=bool)
    n = t.node_count
    return build_tree(
        root=0,
        children=(left, right),
        is_leaf=is_leaf,
        feature=np.maximum(t.feature, 0),
        threshold=t.threshold,
        default_left=go_left,
        nan_left=go_left,
        zero_missing=np.zeros(n, dtype=bool),
        cat_left=np.full(n, -1),
        cat_known=np.full(n, -1),
        leaf_value=values,
        native_leaf=np.arange(n),
        output=output,
    )


def _boosted(obj: Any) -> TreeEnsemble:
    init = obj.init_
    if not (isinstance(init, str) and init == "zero") and type(init).__name__ not in (
        "DummyClassifier",
        "DummyRegressor",
    ):
        raise UnsupportedTree(f"its init estimator is a {type(init).__name__}")
    n_features = int(obj.n_features_in_)
    base = np.asarray(
        obj._raw_predict_init(np.zeros((1, n_features), dtype=np.float32)), dtype=np.float64
    )[0]
    classes = _classes(obj)
    loss = type(obj._loss).__name__
    link: Link = "identity"
    link_scale = 1.0
    label_rule: LabelRule = "proba_argmax"
    if classes is not None:
        if loss == "HalfBinomialLoss":
            link, label_rule = "sigmoid", "raw_ge0"
        elif loss == "ExponentialLoss":
            link, link_scale, label_rule = "sigmoid", 2.0, "raw_ge0"
        elif loss == "HalfMultinomialLoss":
            link, label_rule = "softmax", "raw_argmax"
        else:
            raise UnsupportedTree(f"its loss {loss} has no known probability link")
    lr = float(obj.learning_rate)
    stages = obj.estimators_
    trees = tuple(
        _sk_tree(stages[s, k].tree_, classifier=False, scale=lr, output=k)
        for s in range(stages.shape[0])
        for k in range(stages.shape[1])
    )
    return TreeEnsemble(
        trees=trees,
        n_features=n_features,
        n_outputs=int(stages.shape[1]),
        base_score=base,
        link=link,
        link_scale=link_scale,
        task=_task(classes),
        classes=classes,
        source=type(obj).__name__,
        objective=loss,
        label_rule=label_rule,
        input_rule="float32",
    )


_HIST_LINKS: dict[str, Link] = {
    "IdentityLink": "identity",
    "LogLink": "exp",
    "LogitLink": "sigmoid",
    "MultinomialLogit": "softmax",
    "SymmetricMultinomialLogit": "softmax",
}


def _hist(obj: Any) -> TreeEnsemble:
    classes = _classes(obj)
    link = _HIST_LINKS.get(type(obj._loss.link).__name__)
    if link is None or (classes is None) != (link in ("identity", "exp")):
        raise UnsupportedTree(f"its loss link {type(obj._loss.link).__name__} is not supported")
    n_features = int(obj.n_features_in_)
    order, categories = _hist_features(obj, n_features)
    known_bits, f_idx_map = obj._bin_mapper.make_known_categories_bitsets()
    sets: list[np.ndarray] = []
    trees: list[Tree] = []
    for iteration in obj._predictors:
        for k, predictor in enumerate(iteration):
            nodes = predictor.nodes
            n = nodes.shape[0]
            cat_left, cat_known = np.full(n, -1), np.full(n, -1)
            for i in np.flatnonzero(nodes["is_categorical"] & ~nodes["is_leaf"].astype(bool)):
                fi = int(nodes["feature_idx"][i])
                raw = categories[fi]
                codes_left = bitset_members(predictor.raw_left_cat_bitsets[nodes["bitset_idx"][i]])
                codes_known = bitset_members(known_bits[f_idx_map[fi]])
                left = raw[codes_left[codes_left < raw.size]]
                codes = np.union1d(codes_left, codes_known)
                known = raw[codes[codes < raw.size]]
                known = known[~np.isnan(known)] if known.size else known
                cat_left[i], cat_known[i] = len(sets), len(sets) + 1
                sets += [left[~np.isnan(left)].astype(np.int64), known.astype(np.int64)]
            go_left = nodes["missing_go_to_left"].astype(bool)
            trees.append(
                build_tree(
                    root=0,
                    children=(nodes["left"], nodes["right"]),
                    is_leaf=nodes["is_leaf"].astype(bool),
                    feature=order[nodes["feature_idx"]],
                    threshold=nodes["num_threshold"],
                    default_left=go_left,
                    nan_left=go_left,
                    zero_missing=np.zeros(n, dtype=bool),
                    cat_left=cat_left,
                    cat_known=cat_known,
                    leaf_value=nodes["value"].astype(np.float64),
                    native_leaf=np.arange(n),
                    output=k,
                )
            )
    K = int(obj.n_trees_per_iteration_)
    label_rule: LabelRule = "proba_argmax"
    if classes is not None:
        label_rule = "raw_gt0" if K == 1 else "raw_argmax"
    return TreeEnsemble(
        trees=tuple(trees),
        n_features=n_features,
        n_outputs=K,
        base_score=np.asarray(obj._baseline_prediction, dtype=np.float64).reshape(-1),
        link=link,
        task=_task(classes),
        classes=classes,
        source=type(obj).__name__,
        objective=type(obj._loss).__name__,
        label_rule=label_rule,
        input_rule="float64",
        category_rule="exact",
        cat_bitsets=bitset_rows(sets) if sets else np.zeros((0, 1), dtype=np.uint32),
    )


def _hist_features(obj: Any, n_features: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Map from the predictors' (encoded) feature index to the input column, and categories."""
    pre = getattr(obj, "_preprocessor", None)
    if pre is None:
        return np.arange(n_features), {}
    names = [name for name, _, _ in pre.transformers_]
    is_cat = np.asarray(obj.is_categorical_, dtype=bool)
    if names[:2] != ["encoder", "numerical"] or is_cat.shape[0] != n_features:
        raise UnsupportedTree("its categorical preprocessor has an unexpected layout")
    order = np.concatenate([np.flatnonzero(is_cat), np.flatnonzero(~is_cat)])
    categories: dict[int, np.ndarray] = {}
    for j, values in enumerate(pre.named_transformers_["encoder"].categories_):
        raw = np.asarray(values, dtype=np.float64)
        finite = raw[~np.isnan(raw)]
        if ((finite < 0) | (finite >= MAX_CATEGORY) | (finite != np.trunc(finite))).any():
            raise UnsupportedTree(
                f"its categorical features have values that are not integers in [0, {MAX_CATEGORY})"
            )
        categories[j] = raw
    return order, categories


def _classes(obj: Any) -> tuple[str, ...] | None:
    raw = getattr(obj, "classes_", None)
    return None if raw is None else tuple(str(c) for c in raw)


def _task(classes: tuple[str, ...] | None) -> Task:
    if classes is None:
        return "regression"
    return "binary" if len(classes) == 2 else "multiclass"
