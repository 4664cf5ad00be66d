"""LightGBM's text model format: the header, a structural check, and the tree-ensemble IR.

Kept apart from the converter because three layers read the same text: the artifact loader
checks a file before LightGBM's own parser sees it, the converter reads the objective, and the
native kernel turns its model string into IR only when a plan rule asks for it. None of them
needs LightGBM itself for this, so this module does not import it (nor Spark).
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from collections import OrderedDict
from dataclasses import fields
from typing import TypeVar

import numpy as np

from batchscore.errors import ModelError
from batchscore.kernels.task import Task
from batchscore.kernels.trees.ir import Link, Tree, TreeEnsemble, UnsupportedTree, build_tree

_K = TypeVar("_K")
_V = TypeVar("_V")


def header(model_str: str) -> dict[str, str]:
    """The `key=value` lines at the top of a model string (before the first tree)."""
    out: dict[str, str] = {}
    end = model_str.find("\nTree=")
    for line in (model_str if end < 0 else model_str[:end]).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def objective_of(model_str: str) -> str:
    """The objective's name ("binary", "poisson", ...); "custom" when none was recorded."""
    value = header(model_str).get("objective", "")
    return value.split()[0] if value else "custom"


def num_class(model_str: str) -> int:
    """Classes of a multiclass model (1 for everything else)."""
    return int(header(model_str).get("num_class", "1"))


# --- text-model validation -------------------------------------------------------------------
# LightGBM's C++ loader parses trees in parallel and aborts (or segfaults) the whole process on
# a malformed file instead of raising, e.g. on a truncated download. Model files are checked
# here, in Python, the way the loader slices them, before LightGBM ever sees one.

_LEAF_ARRAYS = ("leaf_value", "leaf_weight", "leaf_count", "leaf_const", "num_features")
_NODE_ARRAYS = (
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "internal_value",
    "internal_weight",
    "internal_count",
)
_INT = re.compile(r"^[+-]?[0-9]+$")
# Bounded digit counts: LightGBM writes %.17g, and a bound keeps values without an exponent
# inside double range, so only tokens with a 3-digit exponent need a closer look.
# Unambiguous (one way to match each token) and atomic, so a bad line fails in linear time
# instead of backtracking through every token.
_NUM = (
    r"(?>[+-]?(?:(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})(?:[eE][+-]?[0-9]{1,4})?|inf|nan))"
)
_NUMBER = re.compile(rf"^{_NUM}$", re.I)
_NUMBER_LIST = re.compile(rf"^ *(?:{_NUM}(?> +{_NUM})*+)? *$", re.I)
_INT_LIST = re.compile(r"^ *(?:(?>[+-]?[0-9]{1,10})(?> +(?>[+-]?[0-9]{1,10}))*+)? *$")
_HUGE_OR_TINY = re.compile(r"[eE][+-]?0*[0-9]{3}")
_PARAM_LINE = re.compile(rb"^\[[a-z0-9_]+: [^\n]*\]$")
_NEEDED_HEADER = ("version", "num_class", "num_tree_per_iteration", "max_feature_idx")


class ModelTextError(ModelError):
    """A LightGBM text model that the native loader could crash on.

    The message is a fragment (what is wrong inside the file); the artifact loader wraps it
    with the model's name and the fix."""


MEMO_SIZE = 8
"""LightGBM texts whose check and IR a process keeps, by content: a notebook or a backfill that
scores with the same model again neither re-checks nor re-parses it (for 210 trees, ~25 ms and
~45 ms of every run's driver time)."""
_VALIDATED: OrderedDict[str, None] = OrderedDict()
_IRS: OrderedDict[tuple[str, str, tuple[str, ...] | None, str], TreeEnsemble] = OrderedDict()


def _remember(memo: OrderedDict[_K, _V], key: _K, value: _V) -> _V:
    memo[key] = value
    while len(memo) > MEMO_SIZE:
        memo.popitem(last=False)
    return value


def validate_model_text(data: bytes) -> None:
    """Raise ModelTextError unless `data` is a structurally complete LightGBM text model."""
    digest = hashlib.sha256(data).hexdigest()
    if digest in _VALIDATED:
        _VALIDATED.move_to_end(digest)
        return
    _check_text(data)
    _remember(_VALIDATED, digest, None)


def _check_text(data: bytes) -> None:
    start = data.find(b"\nTree=")
    if start < 0:
        raise ModelTextError("no trees found")
    start += 1
    head = header(data[:start].decode("utf-8"))
    missing = [k for k in (*_NEEDED_HEADER, "tree_sizes") if k not in head]
    if missing:
        raise ModelTextError(f"header lacks {', '.join(missing)}")
    max_feature = _int(head["max_feature_idx"], "max_feature_idx")
    num_class = _int(head["num_class"], "num_class")
    per_iteration = _int(head["num_tree_per_iteration"], "num_tree_per_iteration")
    sizes = [_int(s, "tree_sizes") for s in head["tree_sizes"].split()]
    if max_feature < 0 or num_class < 1 or per_iteration < 1 or len(sizes) % per_iteration:
        raise ModelTextError("header counts (classes, trees per iteration, features) disagree")
    for key in ("feature_names", "feature_infos"):
        if key in head and len(head[key].split()) != max_feature + 1:
            raise ModelTextError(f"{key} does not list max_feature_idx + 1 features")
    offset = start
    for i, size in enumerate(sizes):
        block = data[offset : offset + size]
        if len(block) != size or not block.startswith(b"Tree=%d\n" % i):
            raise ModelTextError(f"tree {i} is missing or cut short (file truncated?)")
        _check_tree(block.decode("utf-8"), i, max_feature)
        offset += size
    if not data[offset:].startswith(b"end of trees"):
        raise ModelTextError("'end of trees' is missing after the last tree (file truncated?)")
    _check_parameters(data[offset:])


def _check_parameters(tail: bytes) -> None:
    """Every `[key: value]` line intact: LightGBM segfaults on a line without ': '."""
    lines = tail.split(b"\n")
    if b"parameters:" not in lines:
        return
    for line in lines[lines.index(b"parameters:") + 1 :]:
        if line == b"end of parameters":
            return
        if line and not _PARAM_LINE.match(line):
            raise ModelTextError(f"malformed parameter line {line[:40]!r}")
    raise ModelTextError("the parameters section is cut short (file truncated?)")


def _check_tree(text: str, index: int, max_feature: int) -> None:
    where = f"tree {index}"
    fields = _tree_fields(text, where)
    leaves = _int(fields.get("num_leaves", ""), f"{where} num_leaves")
    num_cat = _int(fields.get("num_cat", ""), f"{where} num_cat")
    if leaves < 1 or num_cat < 0 or "leaf_value" not in fields:
        raise ModelTextError(f"{where} lacks num_leaves, num_cat or leaf_value")
    # A single-leaf tree leaves its node arrays (and leaf_weight) empty; LightGBM skips them.
    keys = (*_LEAF_ARRAYS, *_NODE_ARRAYS) if leaves > 1 else ("leaf_value",)
    arrays = {k: fields[k].split() for k in keys if k in fields}
    for key, tokens in arrays.items():
        want = leaves if key in _LEAF_ARRAYS else leaves - 1
        if len(tokens) != want:
            raise ModelTextError(f"{where} {key} has {len(tokens)} values, expected {want}")
    if fields.get("is_linear", "0").strip() == "1":
        _check_linear(fields, leaves, max_feature, where)
    if leaves > 1:
        _check_nodes(fields, arrays, leaves, num_cat, max_feature, where)


def _tree_fields(text: str, where: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        if not line:
            break
        key, sep, value = line.partition("=")
        if not sep:
            raise ModelTextError(f"{where} has a malformed line {line[:40]!r}")
        _check_numbers(value, f"{where} {key}")  # every field of a tree is numeric
        fields[key] = value
    return fields


def _check_nodes(
    fields: dict[str, str],
    arrays: dict[str, list[str]],
    leaves: int,
    num_cat: int,
    max_feature: int,
    where: str,
) -> None:
    """Indices in range: out-of-range ones make the predictor read outside its arrays."""
    ints: dict[str, np.ndarray] = {}
    for key in ("split_feature", "decision_type", "left_child", "right_child"):
        if key not in arrays or "threshold" not in arrays:
            raise ModelTextError(f"{where} lacks {key} or threshold")
        ints[key] = _ints(fields[key], f"{where} {key}")
    features = ints["split_feature"]
    if ((features < 0) | (features > max_feature)).any():
        raise ModelTextError(f"{where} splits on a feature beyond max_feature_idx")
    for key in ("left_child", "right_child"):
        if ((ints[key] < -leaves) | (ints[key] >= leaves - 1)).any():
            raise ModelTextError(f"{where} {key} points outside the tree")
    categorical = np.flatnonzero(ints["decision_type"] & 1)
    if num_cat > 0 or categorical.size:
        _check_categorical(fields, arrays["threshold"], categorical, num_cat, where)


def _check_categorical(
    fields: dict[str, str], thresholds: list[str], nodes: np.ndarray, num_cat: int, where: str
) -> None:
    """A categorical split's threshold indexes cat_boundaries, which indexes cat_threshold."""
    if "cat_boundaries" not in fields or "cat_threshold" not in fields:
        raise ModelTextError(f"{where} lacks cat_boundaries or cat_threshold")
    bounds = _ints(fields["cat_boundaries"], f"{where} cat_boundaries")
    bitsets = _ints(fields["cat_threshold"], f"{where} cat_threshold", limit=2**32)
    if (
        len(bounds) != num_cat + 1
        or bounds[0] != 0
        or bounds[-1] != len(bitsets)
        or (np.diff(bounds) < 0).any()
        or (bitsets < 0).any()
    ):
        raise ModelTextError(f"{where} has inconsistent categorical splits")
    for i in nodes:
        if not 0 <= float(thresholds[i]) < num_cat:
            raise ModelTextError(f"{where} has a categorical split outside cat_boundaries")


def _check_linear(fields: dict[str, str], leaves: int, max_feature: int, where: str) -> None:
    counts = [_int(n, f"{where} num_features") for n in fields.get("num_features", "").split()]
    for key in ("leaf_features", "leaf_coeff"):
        if len(counts) != leaves or len(fields.get(key, "").split()) != sum(counts):
            raise ModelTextError(f"{where} has inconsistent linear leaves ({key})")
    used = _ints(fields.get("leaf_features", ""), f"{where} leaf_features")
    if ((used < 0) | (used > max_feature)).any():
        raise ModelTextError(f"{where} leaf_features names a feature beyond max_feature_idx")


def _int(text: str, what: str) -> int:
    text = text.strip()
    if not _INT.match(text) or abs(int(text)) >= 2**31:
        raise ModelTextError(f"{what} is not a 32-bit integer: {text[:40]!r}")
    return int(text)


def _ints(value: str, what: str, *, limit: int = 2**31) -> np.ndarray:
    """A line of integers below `limit` in magnitude (vectorised: trees have many nodes)."""
    if not _INT_LIST.match(value):
        raise ModelTextError(f"{what} is not a list of integers: {value[:40]!r}")
    out = np.array(value.split(), dtype=np.int64)
    if (np.abs(out) >= limit).any():
        raise ModelTextError(f"{what} has a value beyond 32 bits")
    return out


def _check_numbers(value: str, what: str) -> None:
    """Space-separated numbers LightGBM can parse: one regex per line keeps big models fast.

    A regex, not float(): Python also accepts "1_0", which LightGBM does not; and a value
    outside double range makes LightGBM's std::stod throw inside a parallel loop (abort).
    """
    if not _NUMBER_LIST.match(value):
        bad = next((t for t in value.split() if not _NUMBER.match(t)), value)
        raise ModelTextError(f"{what} has a non-number {bad[:40]!r}")
    if not _HUGE_OR_TINY.search(value):
        return
    for token in value.split():
        if token.lstrip("+-").lower() in ("inf", "nan"):
            continue
        magnitude = abs(float(token))
        mantissa = token.lower().partition("e")[0]
        if math.isinf(magnitude) or (
            magnitude < sys.float_info.min and mantissa.strip("+-.0") != ""
        ):
            raise ModelTextError(f"{what} has a value outside double range {token[:40]!r}")


# --- text model -> tree-ensemble IR ------------------------------------------------------------
# Node semantics are LightGBM 4's Tree::NumericalDecision / CategoricalDecision on doubles:
# NaN -> 0.0 unless missing_type is NaN; missing_type Zero sends |x| <= 1e-35f the default way;
# then `x <= threshold`. Categorical: NaN or int(x) < 0 -> right; bit int(x) of the node's
# cat_threshold words -> left; anything else -> right.

_IR_LINKS: dict[str, Link] = {
    "regression": "identity",
    "regression_l1": "identity",
    "huber": "identity",
    "fair": "identity",
    "quantile": "identity",
    "mape": "identity",
    "lambdarank": "identity",
    "rank_xendcg": "identity",
    "poisson": "exp",
    "gamma": "exp",
    "tweedie": "exp",
    "binary": "sigmoid",
    "multiclassova": "sigmoid",
    "multiclass": "softmax",
}


def lightgbm_ir(
    model_str: str, *, task: Task, classes: tuple[str, ...] | None, source: str
) -> TreeEnsemble:
    """The IR of a LightGBM text model; UnsupportedTree for what it cannot reproduce exactly.
    Kept by content (MEMO_SIZE), with its arrays read-only, since every kernel shares it."""
    key = (hashlib.sha256(model_str.encode("utf-8")).hexdigest(), task, classes, source)
    known = _IRS.get(key)
    if known is not None:
        _IRS.move_to_end(key)
        return known
    return _remember(_IRS, key, _read_only(_parse_ir(model_str, task, classes, source)))


def _read_only(ir: TreeEnsemble) -> TreeEnsemble:
    for tree in ir.trees:
        for f in fields(tree):
            value = getattr(tree, f.name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
    ir.base_score.flags.writeable = False
    ir.cat_bitsets.flags.writeable = False
    return ir


def _parse_ir(
    model_str: str, task: Task, classes: tuple[str, ...] | None, source: str
) -> TreeEnsemble:
    end = model_str.find("\nTree=")
    head = header(model_str)
    tokens = head.get("objective", "").split()
    objective = tokens[0] if tokens else "custom"
    link = _IR_LINKS.get(objective)
    if link is None:
        raise UnsupportedTree(f"objective '{objective}' has no link the IR reproduces")
    if "sqrt" in tokens[1:]:
        raise UnsupportedTree("objective 'regression sqrt' squares its raw output")
    if (task == "regression") != (link in ("identity", "exp")):
        raise UnsupportedTree(f"objective '{objective}' does not give a {task} output")
    if "\naverage_output" in model_str[: max(end, 0)]:
        raise UnsupportedTree("random-forest mode (average_output) is not supported")
    options = dict(t.split(":", 1) for t in tokens[1:] if ":" in t)
    per_iteration = int(head.get("num_tree_per_iteration", "1"))
    bitsets: list[np.ndarray] = []
    trees: list[Tree] = []
    for i, block in enumerate(_tree_blocks(model_str)):
        trees.append(_lightgbm_tree(block, i % per_iteration, bitsets))
    width = max((b.shape[0] for b in bitsets), default=1)
    cat = np.zeros((len(bitsets), width), dtype=np.uint32)
    for r, b in enumerate(bitsets):
        cat[r, : b.shape[0]] = b
    return TreeEnsemble(
        trees=tuple(trees),
        n_features=int(head["max_feature_idx"]) + 1,
        n_outputs=per_iteration,
        base_score=np.zeros(per_iteration),
        link=link,
        link_scale=float(options.get("sigmoid", "1")),
        task=task,
        classes=classes,
        source=source,
        objective=objective,
        input_rule="lightgbm",
        category_rule="truncate",
        cat_bitsets=cat if bitsets else np.zeros((0, 1), dtype=np.uint32),
    )


def _tree_blocks(model_str: str) -> list[dict[str, str]]:
    start = model_str.find("\nTree=")
    stop = model_str.find("\nend of trees")
    body = model_str[start + 1 : stop if stop >= 0 else len(model_str)]
    blocks: list[dict[str, str]] = []
    for chunk in body.split("\nTree=")[0:]:
        fields: dict[str, str] = {}
        for line in chunk.splitlines()[1:]:
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _lightgbm_tree(f: dict[str, str], output: int, bitsets: list[np.ndarray]) -> Tree:
    if f.get("is_linear", "0") == "1":
        raise UnsupportedTree("linear_tree models have linear leaves")
    leaves = int(f["num_leaves"])
    m = leaves - 1
    values = np.array(f["leaf_value"].split(), dtype=np.float64)
    n = m + leaves

    def ints(key: str) -> np.ndarray:
        return np.array(f.get(key, "").split(), dtype=np.int64)

    feature, dtype = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    threshold = np.zeros(n)
    children = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    if m:
        feature[:m], dtype[:m] = ints("split_feature"), ints("decision_type")
        threshold[:m] = np.array(f["threshold"].split(), dtype=np.float64)
        for arr, key in zip(children, ("left_child", "right_child"), strict=True):
            c = ints(key)
            arr[:m] = np.where(c >= 0, c, m + ~c)
    categorical = (dtype & 1) == 1
    default_left = ((dtype >> 1) & 1) == 1
    missing = (dtype >> 2) & 3
    with np.errstate(invalid="ignore"):
        nan_left = np.where(missing == 0, 0.0 <= threshold, default_left)
    cat_left = np.full(n, -1)
    if categorical.any():
        bounds, words = ints("cat_boundaries"), ints("cat_threshold")
        for node in np.flatnonzero(categorical):
            k = int(threshold[node])
            cat_left[node] = len(bitsets)
            bitsets.append(words[bounds[k] : bounds[k + 1]].astype(np.uint32))
        threshold[categorical] = 0.0
        nan_left[categorical] = False
    leaf_value = np.zeros(n)
    leaf_value[m:] = values
    return build_tree(
        root=0 if m else m,
        children=children,
        is_leaf=np.arange(n) >= m,
        feature=feature,
        threshold=threshold,
        default_left=default_left,
        nan_left=nan_left,
        zero_missing=(missing == 1) & ~categorical,
        cat_left=cat_left,
        cat_known=np.full(n, -1),
        leaf_value=leaf_value,
        native_leaf=np.arange(n) - m,
        output=output,
    )
