"""`on_missing: quarantine`: fact rows whose key finds no dimension row are held out, not scored.

The fact rows split exactly: every selected row is either scored or quarantined (with the join
that found nothing), never both, never lost; a forced rerun replaces both tables' partition;
the quarantined rows' ids equal the missing and null keys. Works with factorized partials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import batchscore as bs
from batchscore.errors import SpecError
from batchscore.jobs.run import run_job
from tests.star import build_star

pytestmark = pytest.mark.spark
DAY = "2026-11-21"


def _quarantine_spec(root: Path, mode: str) -> Path:
    star = build_star(root, seed=4, fact_rows=240, a_rows=10, b_rows=6, c_rows=3,
                      missing=0.25, nan_rate=0.0, mode=mode, trees=True)  # fmt: skip
    text = star.spec.read_text()
    text = text.replace(
        "      on: {fk_a: a_id}\n", "      on: {fk_a: a_id}\n      on_missing: quarantine\n"
    )
    text = text.replace("output: {path: out,", "output: {path: out, quarantine: held,")
    star.spec.write_text(text)
    return star.spec


def _table(path: Path) -> pa.Table:
    return pa.table(DeltaTable(str(path)).to_pyarrow_table())


@pytest.mark.parametrize("mode", ["always", "never"])
def test_missing_keys_are_quarantined_not_scored(spark: Any, tmp_path: Path, mode: str) -> None:
    spec_path = _quarantine_spec(tmp_path, mode)
    spec = bs.load_spec(spec_path, run_date=DAY)
    assert f"quarantined to {tmp_path / 'held'}" in bs.explain(spec)
    fact = _table(tmp_path / "fact").to_pandas()
    day = fact[fact["ds"] == DAY]
    missing = day["fk_a"].isna() | (day["fk_a"] >= 10)
    assert missing.any() and (~missing).any()
    result = run_job(spec, spark=spark)
    assert result.quarantined == int(missing.sum())
    assert "quarantined" in result.summary()
    held = _table(tmp_path / "held")
    assert sorted(held["id"].to_pylist()) == sorted(day.loc[missing, "id"].tolist())
    assert set(held["missing_join"].to_pylist()) == {"dim_a"}
    assert set(held["run_id"].to_pylist()) == {result.run_id}
    out = _table(tmp_path / "out")
    for model in ("ridge", "lgbm", "forest"):
        ids = [i for i, m in zip(out["id"].to_pylist(), out["model"].to_pylist(), strict=True)
               if m == model]  # fmt: skip
        assert sorted(ids) == sorted(day.loc[~missing, "id"].tolist())
    again = run_job(spec, spark=spark, force=True)
    assert again.status == "committed"
    assert _table(tmp_path / "held").num_rows == held.num_rows
    assert _table(tmp_path / "out").num_rows == out.num_rows
    assert np.isfinite(np.array(out["prediction"].to_pylist(), dtype=float)).sum() > 0


def test_quarantine_needs_a_table(tmp_path: Path) -> None:
    spec_path = _quarantine_spec(tmp_path, "auto")
    spec_path.write_text(spec_path.read_text().replace(" quarantine: held,", ""))
    with pytest.raises(SpecError, match=r"output\.quarantine"):
        bs.load_spec(spec_path, run_date=DAY)
