"""Factorized inference == materialized == each model's own output, on random stars/snowflakes.

Each generated schema varies fan-out, missing and null foreign keys, NaNs in fact features and
sparse-vector density; the same job runs naive (no rules), optimized with every join factorized,
and optimized with factorization off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchscore as bs
from batchscore.jobs.run import run_job
from batchscore.plan import RULES
from tests.star import Star, build_star

pytestmark = pytest.mark.spark
DAY = "2026-11-21"


def _variant(star: Star, name: str, mode: str) -> Path:
    text = star.spec.read_text().replace("output: {path: out,", f"output: {{path: out_{name},")
    text = text.replace("factorize: always", f"factorize: {mode}")
    path = star.root / f"{name}.yaml"
    path.write_text(text)
    return path


def _predictions(path: Path) -> dict[str, pa.Table]:
    table = pa.table(DeltaTable(str(path)).to_pyarrow_table())
    return {
        m: table.filter(pc.equal(table["model"], m)).sort_by("id")
        for m in ("ridge", "multi", "binary")
    }


def _check_against_models(star: Star, out: dict[str, pa.Table]) -> None:
    rows = star.ids[1::2]  # ds = 2026-11-21 holds the odd ids
    X = star.X[rows]
    complete = ~np.isnan(X).any(axis=1)
    for name, table in out.items():
        assert table["id"].to_pylist() == rows.tolist()
        model: Any = star.models[name]
        if name == "ridge":
            got = np.array(table["prediction"].to_pylist(), dtype=float)
            np.testing.assert_allclose(got[complete], model.predict(X[complete]), rtol=1e-9)
            assert np.isnan(got[~complete]).all()
            continue
        labels = np.array(table["label"].to_pylist(), dtype=object)
        assert list(labels[complete]) == [str(c) for c in model.predict(X[complete])]
        assert all(v is None for v in labels[~complete])
        proba = table["probability"].to_pylist()
        got = np.array([p for p, ok in zip(proba, complete, strict=True) if ok], dtype=float)
        np.testing.assert_allclose(got, model.predict_proba(X[complete]), rtol=1e-9, atol=1e-15)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 10_000),
    fact_rows=st.integers(120, 400),
    a_rows=st.integers(2, 30),
    b_rows=st.integers(1, 30),
    c_rows=st.integers(2, 10),
    missing=st.sampled_from([0.0, 0.05, 0.2]),
    nan_rate=st.sampled_from([0.0, 0.05]),
)
def test_factorized_equals_materialized_equals_model(
    spark: Any, tmp_path_factory: pytest.TempPathFactory, seed: int, fact_rows: int,
    a_rows: int, b_rows: int, c_rows: int, missing: float, nan_rate: float,
) -> None:  # fmt: skip
    root = tmp_path_factory.mktemp("star")
    star = build_star(root, seed=seed, fact_rows=fact_rows, a_rows=a_rows, b_rows=b_rows,
                      c_rows=c_rows, missing=missing, nan_rate=nan_rate)  # fmt: skip
    factorized = bs.load_spec(_variant(star, "factorized", "always"), run_date=DAY)
    plan_text = bs.explain(factorized)
    assert "PartialScore dim_a" in plan_text and "PartialScore dim_c" in plan_text
    assert "PartialScore dim_b" in plan_text
    run_job(factorized, spark=spark, rules=RULES)
    naive = bs.load_spec(_variant(star, "naive", "never"), run_date=DAY)
    run_job(naive, spark=spark, rules=())
    outputs = {n: _predictions(root / f"out_{n}") for n in ("factorized", "naive")}
    for out in outputs.values():
        _check_against_models(star, out)
    for name in ("ridge", "multi", "binary"):
        a, b = outputs["factorized"][name], outputs["naive"][name]
        assert a["label"].to_pylist() == b["label"].to_pylist()
        np.testing.assert_allclose(
            np.array(a["prediction"].to_pylist(), dtype=float),
            np.array(b["prediction"].to_pylist(), dtype=float),
            rtol=1e-9,
        )


def test_explain_shows_eliminated_joins_and_cost_numbers(tmp_path: Path) -> None:
    star = build_star(tmp_path, seed=1, fact_rows=200, a_rows=10, b_rows=10, c_rows=5,
                      missing=0.0, nan_rate=0.0, mode="auto")  # fmt: skip
    import pyarrow.parquet as pq

    (tmp_path / "dim_d").mkdir()
    pq.write_table(pa.table({"d_id": pa.array([0, 1], pa.int32()), "d0": [1.0, 2.0]}),
                   tmp_path / "dim_d" / "part-0.parquet")  # fmt: skip
    text = star.spec.read_text()
    text = text.replace(
        "  dim_c: {", "  dim_d: {path: dim_d, format: parquet, key: d_id}\n  dim_c: {"
    )
    text = text.replace(
        "    - {table: dim_b, on: {fk_b: b_id}}",
        "    - {table: dim_b, on: {fk_b: b_id}}\n    - {table: dim_d, on: {fk_b: d_id}}",
    )
    star.spec.write_text(text)
    plan = bs.explain(star.spec, run_date=DAY)
    assert (
        "[eliminate_unused_joins] dim_d: no model or output column reads it; join removed" in plan
    )
    assert "Scan dim_d" not in plan
    assert "[factorize_linear] dim_a:" in plan and "tuple ratio" in plan and "cost" in plan
    assert "[prune_partitions] fact: ds = '2026-11-21' keeps 1 of 2 files" in plan


def test_factorize_never_keeps_every_join_materialized(tmp_path: Path) -> None:
    star = build_star(tmp_path, seed=2, fact_rows=100, a_rows=5, b_rows=5, c_rows=5,
                      missing=0.0, nan_rate=0.0, mode="never")  # fmt: skip
    plan = bs.explain(star.spec, run_date=DAY)
    assert "PartialScore" not in plan
    assert "off (planner.factorize: never)" in plan
