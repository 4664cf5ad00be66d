"""Dataset builders: input tables, trained models and job specs for the demo and benchmarks.

- `build_demo`: a synthetic retail star schema (sales / stores / products) with three models.
- `build_walmart`, `build_flights`: the real Morpheus star schemas (see docs/datasets.md)
  with a linear and a LightGBM model each, plus
  `materialize_walmart` / `materialize_flights`, the joined feature matrices to check against.

Names are imported lazily, so `python -m batchscore.datasets.demo` runs without a warning and
`import batchscore.datasets` does not pull in scikit-learn or LightGBM.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchscore.datasets.demo import DemoInfo, build_demo, materialize_demo
    from batchscore.datasets.morpheus import (
        FlightsInfo,
        MorpheusData,
        MorpheusInfo,
        WalmartInfo,
        build_flights,
        build_walmart,
        load_morpheus,
        materialize_flights,
        materialize_walmart,
    )

_HOME = {
    "DemoInfo": "demo",
    "build_demo": "demo",
    "materialize_demo": "demo",
    "FlightsInfo": "morpheus",
    "MorpheusData": "morpheus",
    "MorpheusInfo": "morpheus",
    "WalmartInfo": "morpheus",
    "build_flights": "morpheus",
    "build_walmart": "morpheus",
    "load_morpheus": "morpheus",
    "materialize_flights": "morpheus",
    "materialize_walmart": "morpheus",
}

__all__ = [
    "DemoInfo",
    "FlightsInfo",
    "MorpheusData",
    "MorpheusInfo",
    "WalmartInfo",
    "build_demo",
    "build_flights",
    "build_walmart",
    "load_morpheus",
    "materialize_demo",
    "materialize_flights",
    "materialize_walmart",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"batchscore.datasets.{_HOME[name]}"), name)
    raise AttributeError(f"module 'batchscore.datasets' has no attribute '{name}'")
