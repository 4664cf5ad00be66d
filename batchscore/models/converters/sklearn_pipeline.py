"""scikit-learn Pipelines -> an input stage folded in front of a native kernel.

A fitted front end made of ColumnTransformer (integer columns, or names mapped through
`feature_names_in_`), StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler, SimpleImputer,
OneHotEncoder (numeric categories), FunctionTransformer() and 'passthrough' compiles to a tree
of per-column stage ops (batchscore.kernels.affine). The final estimator compiles on its own:

- a linear model behind a purely affine stage (selections and scalings, no NaN fill, clipping,
  one-hot or missing indicator) becomes ONE AffineKernel over the raw inputs: the scalings are
  folded into W and b, so the planner can factorize and stack it like any linear model;
- otherwise the result is `TransformedKernel(stage, inner)`: the inner kernel (affine W as
  sklearn fitted it, or LightGBM trees) scores the stage's output.

Any step we cannot fold (a transformer we do not know, string categories, transformer weights)
makes the whole pipeline an opaque kernel (exact by construction: it calls the pipeline); the
plan's `explain` line names the step and the closest supported one.

OneHotEncoder(handle_unknown='error') and an unseen value: scikit-learn raises for the whole
batch; the folded kernel gives that row null outputs (prediction, label and probability), as a
missing input does for a linear model. 'ignore' gives the unseen value no contribution;
'infrequent_if_exist' / 'warn' route it to the infrequent bucket. `drop` and infrequent
categories are read from the fitted encoder by transforming each known category once.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    RobustScaler,
    StandardScaler,
)

from batchscore.errors import did_you_mean
from batchscore.kernels.affine import (
    UNKNOWN_ERROR,
    UNKNOWN_ZERO,
    AffineKernel,
    Chain,
    Concat,
    FillMissing,
    MissingIndicator,
    OneHot,
    ScaleColumns,
    SelectColumns,
    StageOp,
    TransformedKernel,
    fold_affine,
)
from batchscore.kernels.base import Kernel, KernelKind
from batchscore.models.convert import compile_model
from batchscore.models.converter_table import DEFAULT_OPTIONS, ConvertOptions, register
from batchscore.models.converters.opaque import to_opaque

FOLDABLE_STEPS: tuple[type, ...] = (
    ColumnTransformer,
    Pipeline,
    StandardScaler,
    MinMaxScaler,
    MaxAbsScaler,
    RobustScaler,
    SimpleImputer,
    OneHotEncoder,
    FunctionTransformer,
)
"""Transformer classes a pipeline's front end may contain to be folded (exact class match)."""


class Unfoldable(Exception):
    """A pipeline step that cannot become a stage op; the message says which and why."""


def step_hint(name: str) -> str:
    """' Did you mean X?' over the foldable step names, or the list when nothing is close."""
    names = [t.__name__ for t in FOLDABLE_STEPS]
    hint = did_you_mean(name, names)
    return hint or f" Foldable steps: {', '.join(names)}."


@register(Pipeline)
def pipeline_kernel(
    obj: Any,
    *,
    model_name: str,
    n_features_hint: int | None,
    options: ConvertOptions = DEFAULT_OPTIONS,
) -> Kernel:
    """Fold the pipeline's transformers into a stage in front of its final estimator's kernel."""
    steps = [step for _, step in obj.steps]
    final = steps[-1]
    if final is None or isinstance(final, str) or not callable(getattr(final, "predict", None)):
        return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
    n_in = getattr(obj, "n_features_in_", None)
    try:
        if not isinstance(n_in, int):
            raise Unfoldable("the pipeline does not declare n_features_in_")
        stage = _chain(steps[:-1], n_in)
    except Unfoldable as exc:
        return to_opaque(
            obj,
            model_name=model_name,
            n_features_hint=n_features_hint,
            note=f"pipeline not folded: {exc}",
        )
    inner = compile_model(
        final, model_name=model_name, n_features_hint=stage.n_out, options=options
    )
    if inner.kind is KernelKind.OPAQUE:
        return to_opaque(obj, model_name=model_name, n_features_hint=n_features_hint)
    if isinstance(inner, TransformedKernel):  # a pipeline as the final step
        stage = Chain([stage, inner.stage], stage.n_in)
        inner = inner.inner
    source = f"Pipeline({type(final).__name__})"
    staged = TransformedKernel(stage, inner, source=source)
    if isinstance(inner, AffineKernel):
        folded = fold_affine(stage, inner)
        if folded is not None and _agree(folded, staged):
            return folded
    return staged


def stage_of(step: Any, n_in: int) -> StageOp:
    """The stage op for one fitted transformer taking `n_in` columns; Unfoldable otherwise."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return Chain([], n_in)
    cls = type(step)
    if cls not in FOLDABLE_STEPS:
        raise Unfoldable(f"step {cls.__name__} is not foldable.{step_hint(cls.__name__)}")
    declared = getattr(step, "n_features_in_", n_in)
    if isinstance(declared, int) and declared != n_in:
        raise Unfoldable(f"step {cls.__name__} takes {declared} columns but gets {n_in}")
    if cls is Pipeline:
        return _chain([s for _, s in step.steps], n_in)
    if cls is ColumnTransformer:
        return _column_transformer(step, n_in)
    if cls is FunctionTransformer:
        if step.func is not None:
            raise Unfoldable("FunctionTransformer with a function is not foldable")
        return Chain([], n_in)
    if cls is StandardScaler:
        sub = step.mean_ if step.with_mean else np.zeros(n_in)
        div = step.scale_ if step.scale_ is not None else np.ones(n_in)
        return ScaleColumns(sub, div, np.ones(n_in), np.zeros(n_in), name="standard")
    if cls is RobustScaler:
        sub = step.center_ if step.with_centering else np.zeros(n_in)
        div = step.scale_ if step.with_scaling else np.ones(n_in)
        return ScaleColumns(sub, div, np.ones(n_in), np.zeros(n_in), name="robust")
    if cls is MinMaxScaler:
        lo = hi = None
        if step.clip:
            lo, hi = np.full(n_in, step.feature_range[0]), np.full(n_in, step.feature_range[1])
        zeros, ones = np.zeros(n_in), np.ones(n_in)
        return ScaleColumns(zeros, ones, step.scale_, step.min_, lo, hi, name="min-max")
    if cls is MaxAbsScaler:
        lo = hi = None
        if getattr(step, "clip", False):
            lo, hi = np.full(n_in, -1.0), np.full(n_in, 1.0)
        zeros, ones = np.zeros(n_in), np.ones(n_in)
        return ScaleColumns(zeros, step.scale_, ones, zeros, lo, hi, name="max-abs")
    if cls is SimpleImputer:
        return _imputer(step, n_in)
    return _one_hot(step, n_in)


def _chain(steps: list[Any], n_in: int) -> Chain:
    ops: list[StageOp] = []
    width = n_in
    for step in steps:
        op = stage_of(step, width)
        ops.append(op)
        width = op.n_out
    return Chain(ops, n_in)


def _column_transformer(ct: Any, n_in: int) -> StageOp:
    if ct.transformer_weights:
        raise Unfoldable("ColumnTransformer with transformer_weights is not foldable")
    indices = getattr(ct, "_transformer_to_input_indices", None)
    out_slices = getattr(ct, "output_indices_", None)
    if not isinstance(indices, dict) or not isinstance(out_slices, dict):
        raise Unfoldable("this ColumnTransformer version does not expose its column indices")
    parts: list[tuple[np.ndarray, StageOp]] = []
    for name, trans, _ in ct.transformers_:
        idx = np.asarray(indices.get(name, []), dtype=np.intp)
        if (isinstance(trans, str) and trans == "drop") or len(idx) == 0:
            continue
        op = stage_of(trans, len(idx))
        span = out_slices.get(name)
        if isinstance(span, slice) and span.stop - span.start != op.n_out:
            raise Unfoldable(f"ColumnTransformer part '{name}' has an unexpected output width")
        parts.append((idx, op))
    return Concat(parts, n_in)


def _imputer(imp: Any, n_in: int) -> StageOp:
    missing = imp.missing_values
    if not (isinstance(missing, float) and np.isnan(missing)):
        raise Unfoldable(f"SimpleImputer(missing_values={missing!r}) is foldable only for NaN")
    try:
        stats = np.asarray(imp.statistics_, dtype=np.float64)
    except (TypeError, ValueError):
        raise Unfoldable("SimpleImputer with non-numeric fill values is not foldable") from None
    valid = np.flatnonzero(~np.isnan(stats))
    fill: StageOp = FillMissing(stats)
    if len(valid) != n_in:  # features with no observed value are dropped, as sklearn does
        fill = Chain([fill, SelectColumns(valid, n_in)], n_in)
    indicator = getattr(imp, "indicator_", None)
    if not imp.add_indicator or indicator is None:
        return fill
    everything = np.arange(n_in)
    return Concat(
        [(everything, fill), (everything, MissingIndicator(indicator.features_, n_in))], n_in
    )


def _one_hot(enc: Any, n_in: int) -> StageOp:
    cats = [np.asarray(c) for c in enc.categories_]
    if any(c.dtype.kind not in "biuf" for c in cats):
        raise Unfoldable(
            "OneHotEncoder with string categories is not foldable (batchscore features are "
            "numbers; encode categories as numeric codes before fitting)"
        )
    widths = getattr(enc, "_n_features_outs", None)
    if widths is None or len(widths) != n_in:
        raise Unfoldable("this OneHotEncoder version does not expose its output widths")
    cats = [c.astype(np.float64) for c in cats]
    base = np.array([c[0] for c in cats], dtype=np.float64)
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    slots: list[np.ndarray] = []
    unknown: list[int] = []
    for j, c in enumerate(cats):
        finite = c[~np.isnan(c)]
        novel = (float(finite.max()) if len(finite) else 0.0) + 1.5
        probe = np.tile(base, (len(c) + 1, 1))
        probe[: len(c), j] = c
        known = _encode(enc, probe[: len(c)])
        slots.append(_slots(known[:, offsets[j] : offsets[j + 1]], offsets[j]))
        probe[len(c), j] = novel
        try:
            row = _encode(enc, probe[len(c) :])
        except ValueError:
            unknown.append(UNKNOWN_ERROR)
            continue
        slot = _slots(row[:, offsets[j] : offsets[j + 1]], offsets[j])[0]
        unknown.append(int(slot) if slot >= 0 else UNKNOWN_ZERO)
    return OneHot(cats, slots, unknown, int(offsets[-1]))


def _encode(enc: Any, X: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = enc.transform(X)
    return np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)


def _slots(block: np.ndarray, offset: int) -> np.ndarray:
    slots = np.full(block.shape[0], -1, dtype=np.intp)
    for r in range(block.shape[0]):
        hot = np.flatnonzero(block[r])
        if len(hot) > 1 or (len(hot) == 1 and block[r, hot[0]] != 1.0):
            raise Unfoldable("OneHotEncoder output is not one-hot")
        if len(hot) == 1:
            slots[r] = offset + hot[0]
    return slots


def _agree(folded: AffineKernel, staged: TransformedKernel) -> bool:
    """Folding regroups sums; keep it only where it reproduces the staged kernel closely."""
    probe = staged.probe(np.random.default_rng(7), 64)
    a, b = folded.score(probe), staged.score(probe)
    pairs = [(a.prediction, b.prediction), (a.probability, b.probability)]
    for x, y in pairs:
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None:
            if not np.allclose(x, y, rtol=1e-11, atol=1e-13, equal_nan=True):
                return False
    if (a.label is None) != (b.label is None):
        return False
    return a.label is None or b.label is None or a.label.tolist() == b.label.tolist()
