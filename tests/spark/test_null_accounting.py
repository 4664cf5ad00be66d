"""No silent nulls: every null prediction is counted per model and reason.

The demo's stores dimension gets NaN and inf in `size_sqm`, NaN in `footfall`, and loses some
rows; the expected counts are computed here from the input tables with pyarrow/numpy, on the
same first-reason-wins rule (missing dimension row, then the first bad feature in spec order).
The run goes through the real CLI in a fresh process, so its stderr is the one a scheduler sees.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from batchscore.datasets.demo import FEATURES
from batchscore.physical.null_counts import NullTally, collect_nulls, null_dir
from batchscore.sinks.ownership import project_file
from tests.spark.test_cli_and_cluster import _cli

REPO = Path(__file__).resolve().parents[2]
RUN_DATE = "2026-11-21"
LINEAR = ("revenue_glm", "basket_class")


def _break_stores(root: Path) -> None:
    folder = root / "data" / "stores"
    table = pq.read_table(folder)
    ids = table["store_id"].to_numpy()
    size = table["size_sqm"].to_numpy().copy()
    size[ids % 7 == 1] = np.nan
    size[ids % 7 == 2] = np.inf
    size[ids % 7 == 3] = -np.inf
    footfall = table["footfall"].to_numpy().copy()
    footfall[ids % 13 == 5] = np.nan
    table = table.set_column(table.schema.get_field_index("size_sqm"), "size_sqm", pa.array(size))
    table = table.set_column(
        table.schema.get_field_index("footfall"), "footfall", pa.array(footfall)
    )
    table = table.filter(pa.array(ids % 11 != 0))
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(table, folder / "part-0.parquet")


def _expected(root: Path) -> dict[str, dict[str, int]]:
    """Per model and reason, from the input tables: what the run must report."""
    sales = DeltaTable(str(root / "data" / "sales")).to_pyarrow_table()
    sales = sales.filter(pc.equal(sales["ds"], RUN_DATE))
    stores = pq.read_table(root / "data" / "stores")
    products = DeltaTable(str(root / "data" / "products")).to_pyarrow_table()
    tables = {"sales": sales, "stores": stores, "products": products}
    keys = {"stores": "store_id", "products": "product_id"}
    n = sales.num_rows
    found: dict[str, np.ndarray] = {}
    positions: dict[str, np.ndarray] = {}
    for name, key in keys.items():
        dim_keys = tables[name][key].to_numpy()
        lookup = {int(k): i for i, k in enumerate(dim_keys)}
        fact = sales[key].to_pylist()
        positions[name] = np.array([lookup.get(k, -1) if k is not None else -1 for k in fact])
        found[name] = positions[name] >= 0

    def column(label: str) -> tuple[np.ndarray, np.ndarray]:
        """(null, non-finite) per fact row of one feature."""
        table, _, col = label.rpartition(".")
        table = table or "sales"
        source = tables[table][col]
        if table != "sales":
            rows = np.maximum(positions[table], 0)
            source = source.take(pa.array(rows))
        null = np.asarray(source.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_list(source.type):
            return null, np.zeros(n, dtype=bool)
        values = pc.cast(source, pa.float64()).to_numpy(zero_copy_only=False)
        return null, ~np.isfinite(values) & ~null

    out: dict[str, dict[str, int]] = {}
    for model in LINEAR:
        counts: dict[str, int] = {}
        left = np.ones(n, dtype=bool)
        missing = ~(found["stores"] & found["products"])
        counts["missing dimension row"] = int(missing.sum())
        left &= ~missing
        for feature in FEATURES[model]:
            label = feature if "." in feature else f"sales.{feature}"
            null, bad = column(feature)
            for reason, rows in ((f"null in {label}", null), (f"NaN/inf in {label}", bad)):
                hit = left & rows
                if hit.any():
                    counts[reason] = int(hit.sum())
                left &= ~hit
        out[model] = {k: v for k, v in counts.items() if v}
    return out


@pytest.mark.spark
def test_null_predictions_are_counted_per_model_and_reason(job: Path, tmp_path: Path) -> None:
    _break_stores(job)
    expected = _expected(job)
    assert all(len(reasons) >= 2 for reasons in expected.values()), expected
    summary = tmp_path / "summary.json"
    done = _cli(
        "run", str(job / "conf" / "demo.yaml"), "--run-date", RUN_DATE,
        "--summary-json", str(summary),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RuntimeWarning" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    body = json.loads(summary.read_text())
    assert body["status"] == "committed" and body["rows"] == 9_000 and body["table_version"] == 0
    assert body["quarantined"] == 0 and body["seconds"] > 0
    nulls = body["null_predictions"]
    assert "return_risk" not in nulls  # LightGBM routes NaN/inf itself: no null prediction
    assert {m: nulls[m] for m in LINEAR} == expected
    assert body["null_rows"] == sum(sum(r.values()) for r in expected.values())
    for model, reasons in expected.items():
        total = sum(reasons.values())
        assert f"{model}: {total:,} rows with null predictions (" in done.stdout, done.stdout
        for reason, count in reasons.items():
            assert f"{count:,} {reason}" in done.stdout
    # what the summary counts is what the table holds
    table = DeltaTable(str(job / "out" / "predictions")).to_pyarrow_table()
    for model in ("revenue_glm", "basket_class", "return_risk"):
        rows = table.filter(pc.equal(table["model"], model))
        column = "prediction" if model == "revenue_glm" else "probability"
        assert rows[column].null_count == sum(nulls.get(model, {}).values())
    assert not (job / "out" / "predictions" / "_batchscore" / "nulls").exists() or not any(
        (job / "out" / "predictions" / "_batchscore" / "nulls").iterdir()
    )


@pytest.mark.spark
def test_run_result_carries_the_counts(job: Path, spark: Any) -> None:
    import batchscore as bs

    _break_stores(job)
    expected = _expected(job)
    result = bs.run(job / "conf" / "demo.yaml", run_date=RUN_DATE, spark=spark)
    assert result.nulls == {m: result.nulls[m] for m in LINEAR}
    assert {m: dict(r) for m, r in result.nulls.items()} == expected
    assert "rows with null predictions" in result.summary()
    assert result.to_json()["null_predictions"] == expected


def test_tasks_files_add_up_and_a_killed_runs_files_are_batchscores(tmp_path: Path) -> None:
    folder = null_dir(str(tmp_path / "t"), "20260101T000000Z-abcd1234")
    for reasons in ({"missing dimension row": 2}, {"missing dimension row": 3, "x": 1}):
        tally = NullTally()
        tally.add("m", reasons)
        tally.dump(folder)
    NullTally().dump(folder)  # nothing null: no file
    files = sorted(Path(folder).iterdir())
    assert len(files) == 2
    rel = str(files[0].relative_to(tmp_path / "t"))
    assert project_file(rel, exists=False), rel
    assert collect_nulls(folder) == {"m": {"missing dimension row": 5, "x": 1}}
    assert not Path(folder).exists()
