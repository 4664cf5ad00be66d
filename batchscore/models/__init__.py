"""Model artifacts -> compiled kernels: loading (pin-checked), converting, validating."""

from batchscore.models.artifact import LoadedArtifact, load_artifact, sha256_of
from batchscore.models.compiled import (
    CompiledModel,
    OutputKind,
    check_feature_count,
    compile_from_object,
    compile_from_spec,
    compile_model,
    resolve_output,
)
from batchscore.models.converter_table import ConvertOptions, register, supported_types

__all__ = [
    "CompiledModel",
    "ConvertOptions",
    "LoadedArtifact",
    "OutputKind",
    "check_feature_count",
    "compile_from_object",
    "compile_from_spec",
    "compile_model",
    "load_artifact",
    "register",
    "resolve_output",
    "sha256_of",
    "supported_types",
]
