"""Model converters. Importing this package registers every converter with the registry."""

from batchscore.models.converters import (
    lightgbm,
    opaque,
    sklearn_linear,
    sklearn_pipeline,
    sklearn_trees,  # noqa: F401
)

__all__ = ["lightgbm", "opaque", "sklearn_linear", "sklearn_pipeline"]
