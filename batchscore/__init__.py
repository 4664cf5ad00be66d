"""batchscore: plan, score and commit batch predictions on Spark, with factorized inference.

`import batchscore as bs` gives the notebook API (docs/api.md): `load_spec`, `explain`, `run`,
`run_range`, `score`, `sql`, `read_table`, `history`, `profile`, `report`, `spark_session`,
`build_demo`, the
`RunResult` they return and the `BatchScoreError` family they raise. Spark is imported lazily,
so `import batchscore` and spec/plan work stay fast and Spark-free.
"""

from __future__ import annotations

from batchscore._version import __version__
from batchscore.api import (
    RunResult,
    build_demo,
    explain,
    history,
    load_spec,
    profile,
    read_table,
    report,
    run,
    run_range,
    score,
    spark_session,
    sql,
)
from batchscore.errors import (
    BatchScoreError,
    CommitConflictError,
    DataError,
    ModelError,
    SinkError,
    SpecError,
    StepError,
)

__all__ = [
    "BatchScoreError",
    "CommitConflictError",
    "DataError",
    "ModelError",
    "RunResult",
    "SinkError",
    "SpecError",
    "StepError",
    "__version__",
    "build_demo",
    "explain",
    "history",
    "load_spec",
    "profile",
    "read_table",
    "report",
    "run",
    "run_range",
    "score",
    "spark_session",
    "sql",
]
