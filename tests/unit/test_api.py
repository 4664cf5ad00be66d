"""The public API (docs/api.md): what `import batchscore as bs` gives, and that it stays
Spark-free until a function needs Spark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import batchscore as bs

REPO = Path(__file__).resolve().parents[2]
PUBLIC = {
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
}


def test_public_names_are_exported_and_documented() -> None:
    assert set(bs.__all__) == PUBLIC
    assert all(hasattr(bs, name) for name in PUBLIC)
    documented = (REPO / "docs" / "api.md").read_text()
    for name in PUBLIC - {"__version__"}:
        assert f"`{name}" in documented or f"bs.{name}" in documented, name


def test_import_load_explain_and_history_need_no_spark(demo: Path) -> None:
    code = (
        "import sys\n"
        "import batchscore as bs\n"
        f"spec = bs.load_spec({str(demo / 'conf' / 'demo.yaml')!r})\n"
        "text = bs.explain(spec, run_date='2026-11-21')\n"
        f"commits = bs.history({str(demo / 'data' / 'sales')!r})\n"
        "assert 'Write delta' in text and commits[0]['version'] == 0, (text, commits)\n"
        "print(sorted(m for m in ('pyspark', 'py4j') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout
