"""batchscore: plan, score and commit batch predictions on Spark, with factorized inference.

The notebook API (CONTRACT.md): `load_spec`, `run`, `explain`, `score`, `sql`. Spark is imported
lazily, so `import batchscore` and spec/plan work stay fast and Spark-free.
"""

from __future__ import annotations

__version__ = "0.1.0"

from batchscore.api import RunResult, explain, load_spec, run, score, sql
from batchscore.errors import BatchScoreError

__all__ = [
    "BatchScoreError",
    "RunResult",
    "__version__",
    "explain",
    "load_spec",
    "run",
    "score",
    "sql",
]
