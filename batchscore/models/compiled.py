"""A model as the planner sees it: name, version, provenance and a kernel, checked up front.

Everything that can be wrong with a model (unpinned pickle, wrong output kind, input count
that does not match the features) is found here, on the driver, before any Spark job runs.

This is where models get compiled, so this module imports every converter module: each
registers its converters in the converter table on import, where `compile_model` (re-exported
here, so that callers get it with every converter loaded) finds them.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from batchscore.errors import ModelError
from batchscore.kernels.base import Kernel, KernelKind, Matrix, ScoreOutput
from batchscore.kernels.opaque import UNKNOWN_N_FEATURES
from batchscore.models.artifact import load_artifact
from batchscore.models.convert import compile_model as compile_model
from batchscore.models.converter_table import ConvertOptions
from batchscore.models.converters import (  # noqa: F401  (imported to register their converters)
    lightgbm,
    sklearn_linear,
    sklearn_pipeline,
    sklearn_trees,
)

OutputKind = Literal["predict", "predict_proba"]


@dataclass(frozen=True)
class CompiledModel:
    """One spec model, ready to score. `version` is the spec's, else the sha256's first 12 hex."""

    name: str
    version: str
    sha256: str
    kernel: Kernel
    output: OutputKind
    source: str = ""
    """The registry version that served (`registry:NAME@VERSION`) for a registry reference."""

    @property
    def proba(self) -> bool:
        return self.output == "predict_proba"

    @property
    def n_features(self) -> int:
        return self.kernel.n_features

    def score(self, X: Matrix) -> ScoreOutput:
        return self.kernel.score(X, proba=self.proba)

    def describe(self) -> str:
        return f"{self.name} ({self.version}, output {self.output}): {self.kernel.describe()}"


def compile_from_spec(
    name: str,
    path: str,
    sha256: str | None,
    output: OutputKind | None,
    version: str | None,
    *,
    n_features_hint: int | None = None,
    opaque: bool = False,
    strategy: str | None = None,
) -> CompiledModel:
    """Load (pin-checked) and compile a spec's model; `path` must already be resolved.

    `strategy` is the spec's tree strategy (native, traversal, perfect, gemm, bitvector);
    None lets batchscore choose. It is refused for models that are not tree ensembles.
    """
    artifact = load_artifact(path, sha256=sha256, model_name=name)
    kernel = _compile(artifact.obj, name, n_features_hint, opaque, strategy)
    return CompiledModel(
        name=name,
        version=version or artifact.sha256[:12],
        sha256=artifact.sha256,
        kernel=kernel,
        output=resolve_output(name, kernel, output),
        source=artifact.source,
    )


def compile_from_object(
    name: str,
    obj: Any,
    *,
    output: OutputKind | None = None,
    version: str | None = None,
    n_features_hint: int | None = None,
    opaque: bool = False,
    strategy: str | None = None,
) -> CompiledModel:
    """Compile an in-memory fitted estimator (notebooks: `bs.score(df, models=[...])`).

    Its sha256 is that of its pickle, so lineage still tells two different models apart.
    """
    kernel = _compile(obj, name, n_features_hint, opaque, strategy)
    digest = _object_sha256(name, obj, kernel)
    return CompiledModel(
        name=name,
        version=version or digest[:12],
        sha256=digest,
        kernel=kernel,
        output=resolve_output(name, kernel, output),
    )


def _compile(
    obj: Any, name: str, n_features_hint: int | None, opaque: bool, strategy: str | None
) -> Kernel:
    """compile_model with the spec's tree strategy, refused where no trees can take it."""
    options = ConvertOptions(strategy=strategy)
    kernel = compile_model(
        obj, model_name=name, n_features_hint=n_features_hint, opaque=opaque, options=options
    )
    if strategy is None or kernel.kind is KernelKind.TREE_ENSEMBLE:
        return kernel
    native_kinds = (KernelKind.OPAQUE, KernelKind.LIGHTGBM_NATIVE)
    if strategy == "native" and kernel.kind in native_kinds and not opaque:
        return kernel
    raise ModelError(
        f"Model '{name}' sets strategy: {strategy}, but it is scored as {kernel.describe()}; "
        "strategy applies to tree ensembles (DecisionTree, RandomForest, ExtraTrees, "
        "GradientBoosting, HistGradientBoosting, LightGBM) only. Remove strategy."
    )


def resolve_output(name: str, kernel: Kernel, output: OutputKind | None) -> OutputKind:
    """Default: predict_proba for classifiers that have it, predict otherwise."""
    has_proba = kernel.supports_proba
    if output is None:
        return "predict_proba" if has_proba else "predict"
    if output == "predict_proba" and not has_proba:
        if kernel.task == "regression":
            raise ModelError(
                f"Model '{name}' is a regressor ({kernel.describe()}) and has no "
                "predict_proba; set output: predict, or leave output out."
            )
        raise ModelError(
            f"Model '{name}' ({kernel.describe()}) has no predict_proba; set output: predict, "
            "or leave output out."
        )
    return output


def check_feature_count(
    model: CompiledModel, n_inputs: int, feature_desc: str | Sequence[str]
) -> None:
    """Refuse a model whose features expand to a different number of inputs than it takes."""
    expected = model.kernel.n_features
    if expected == UNKNOWN_N_FEATURES or expected == n_inputs:
        return
    desc = feature_desc if isinstance(feature_desc, str) else f"[{', '.join(feature_desc)}]"
    raise ModelError(
        f"Model '{model.name}' expects {expected} inputs but its features {desc} give "
        f"{n_inputs}. List the features in the model's training order so that they expand "
        f"to exactly {expected} inputs."
    )


def _object_sha256(name: str, obj: Any, kernel: Kernel) -> str:
    for candidate in (obj, kernel):
        try:
            return hashlib.sha256(pickle.dumps(candidate, protocol=5)).hexdigest()
        except Exception:  # lambdas, open handles: try the next, plainer form
            continue
    raise ModelError(
        f"Model '{name}' ({type(obj).__name__}) cannot be pickled, so it cannot be sent to "
        "Spark workers; save it with joblib and reference the file instead."
    )
