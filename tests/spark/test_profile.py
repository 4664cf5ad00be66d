"""`batchscore run --profile`: every stage timed, the task files cleaned up, same output."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import batchscore as bs

pytestmark = pytest.mark.spark


def test_profiled_run_reports_every_stage(spark: Any, demo: Path, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(demo, root)
    result = bs.run(
        root / "conf" / "demo.yaml", run_date="2026-11-21", spark=spark, force=True, profile=True
    )
    assert result.status == "committed" and result.profile is not None
    profile = result.profile
    assert profile.n_tasks >= 1 and profile.rows == 3_000
    stages = set(profile.tasks)
    assert {
        "scan + joins + transfer into Python",
        "feature assembly",
        "output columns",
        "Parquet write + file stats",
    } <= stages
    assert {s for s in stages if s.startswith("score ")}  # each model or batched group
    assert all(v >= 0 for v in profile.tasks.values())
    assert "plan + compile models" in profile.driver
    text = result.summary()
    assert "Profile: driver (wall)" in text and "Parquet write + file stats" in text
    out = root / "out" / "predictions"
    assert not (out / "_batchscore" / "profile" / result.run_id).exists()
    plain = bs.run(root / "conf" / "demo.yaml", run_date="2026-11-21", spark=spark, force=True)
    assert plain.profile is None and plain.rows == result.rows
