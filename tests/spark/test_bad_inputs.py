"""Bad inputs that change a table, or select nothing: the table is left as it was.

The table-driven refusals (spec, data, models, paths, runtime) are in
tests/spark/test_bad_input_matrix.py; these two need a committed table first, or are not refusals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchscore.cli import run_cli
from batchscore.jobs.progress import without_stage_lines

pytestmark = pytest.mark.spark

RUN_DATE = "2026-11-21"


def _edit(root: Path, old: str, new: str) -> Path:
    spec = root / "conf" / "demo.yaml"
    text = spec.read_text()
    assert old in text, old
    spec.write_text(text.replace(old, new, 1))
    return spec


def test_output_schema_change_is_refused(
    job: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    spec = job / "conf" / "demo.yaml"
    assert run_cli(["run", str(spec), "--run-date", "2026-11-20"]) == 0
    out = job / "out" / "predictions"
    before = sorted(p.name for p in out.rglob("*"))
    _edit(job, "layout: long", "layout: wide")
    assert run_cli(["run", str(spec), "--run-date", RUN_DATE]) == 4
    err = without_stage_lines(capsys.readouterr().err).strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "revenue_glm__prediction" in err or "model" in err, err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_empty_partition_selection_exits_zero_and_writes_nothing(
    job: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    assert run_cli(["run", str(job / "conf" / "demo.yaml"), "--run-date", "1999-01-01"]) == 0
    out = capsys.readouterr().out
    assert "no partition matching" in out and "no commit made" in out
    assert not (job / "out").exists()
