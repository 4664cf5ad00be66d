"""The spine end to end on real Spark and real Delta: spec -> plan -> Spark -> one commit.

Predictions are checked against each model's own predict/predict_proba on features joined in
numpy; reruns, new run dates, overwrite_partitions and a failure mid-way are checked on disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import batchscore as bs
from batchscore.datasets.demo import MODEL_FILES, materialize_demo

pytestmark = pytest.mark.spark

DAYS = ["2026-11-19", "2026-11-20", "2026-11-21"]


def _files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*.parquet")}


def _table(path: Path) -> pa.Table:
    return pa.table(DeltaTable(str(path)).to_pyarrow_table())


def _own_output(root: Path, model: str, run_date: str) -> tuple[np.ndarray, Any, Any]:
    X, sale_id = materialize_demo(root, model, run_date=run_date)
    path = root / "models" / MODEL_FILES[model]
    return (
        X,
        sale_id,
        (lgb.Booster(model_file=str(path)) if path.suffix == ".txt" else joblib.load(path)),
    )


def _rows(table: pa.Table, model: str) -> dict[str, np.ndarray]:
    part = table.filter(pa.compute.equal(table["model"], model)).sort_by("sale_id")
    return {
        name: np.array([*part.column(name).to_pylist(), None], dtype=object)[:-1]
        for name in part.column_names
    }


def test_run_matches_each_models_own_output(spark: Any, demo: Path) -> None:
    out = demo / "out" / "predictions"
    result = bs.run(demo / "conf" / "demo.yaml", run_date=DAYS[-1], spark=spark)
    assert result.status == "committed" and result.table_version == 0
    table = _table(out)
    assert set(table.column_names) == {
        "sale_id", "ds", "model", "model_version", "role", "served", "prediction", "label",
        "probability", "run_id", "scored_at",
    }  # fmt: skip
    assert set(table["role"].to_pylist()) == {"champion"} and all(table["served"].to_pylist())
    assert table.num_rows == result.rows == 3 * 3_000
    assert set(table["ds"].to_pylist()) == {DAYS[-1]}

    X, sale_id, ridge = _own_output(demo, "revenue_glm", DAYS[-1])
    rows = _rows(table, "revenue_glm")
    np.testing.assert_array_equal(rows["sale_id"].astype(np.int64), sale_id)
    complete = ~np.isnan(X).any(axis=1)
    np.testing.assert_allclose(
        rows["prediction"][complete].astype(float), ridge.predict(X[complete]), rtol=1e-9
    )
    assert all(v is None for v in rows["prediction"][~complete])  # missing dimension -> null
    assert all(v is None for v in rows["label"]) and all(v is None for v in rows["probability"])

    X, sale_id, logreg = _own_output(demo, "basket_class", DAYS[-1])
    rows = _rows(table, "basket_class")
    complete = ~np.isnan(X).any(axis=1)
    probability = np.array([p for p in rows["probability"][complete]], dtype=float)
    np.testing.assert_allclose(probability, logreg.predict_proba(X[complete]), rtol=1e-9)
    assert list(rows["label"][complete]) == [str(c) for c in logreg.predict(X[complete])]
    assert all(v is None for v in rows["prediction"])  # multiclass: prediction is null

    X, sale_id, booster = _own_output(demo, "return_risk", DAYS[-1])
    rows = _rows(table, "return_risk")
    np.testing.assert_allclose(rows["prediction"].astype(float), booster.predict(X), rtol=1e-9)
    assert list(rows["label"]) == [str(int(p > 0.5)) for p in booster.predict(X)]


def test_rerun_is_a_no_op_and_new_dates_add_exactly_their_rows(spark: Any, demo: Path) -> None:
    out = demo / "out" / "predictions"
    spec = bs.load_spec(demo / "conf" / "demo.yaml")
    bs.run(spec, run_date=DAYS[-1], spark=spark)  # committed by the test above or here
    version, files = DeltaTable(str(out)).version(), _files(out)

    again = bs.run(spec, run_date=DAYS[-1], spark=spark)
    assert again.status == "skipped"
    assert DeltaTable(str(out)).version() == version and _files(out) == files

    other = bs.run(spec, run_date=DAYS[0], spark=spark)
    assert other.status == "committed" and other.table_version == version + 1
    table = _table(out)
    counts = dict(
        zip(*np.unique(table["ds"].to_numpy(zero_copy_only=False), return_counts=True), strict=True)
    )
    assert counts == {DAYS[0]: 9_000, DAYS[-1]: 9_000}
    history = bs.sql("SELECT count(*) AS n FROM p", tables={"p": str(out)}, spark=spark).collect()
    assert history[0]["n"] == 18_000


def test_overwrite_partitions_replaces_only_its_partition(spark: Any, demo: Path) -> None:
    out = demo / "out" / "predictions"
    spec = bs.load_spec(demo / "conf" / "demo.yaml")
    for day in DAYS[:1] + DAYS[-1:]:
        bs.run(spec, run_date=day, spark=spark)
    before = _table(out)
    untouched = before.filter(pa.compute.equal(before["ds"], DAYS[0]))
    rerun = bs.run(spec, run_date=DAYS[-1], spark=spark, force=True)
    assert rerun.status == "committed"
    after = _table(out)
    assert after.num_rows == before.num_rows
    kept = after.filter(pa.compute.equal(after["ds"], DAYS[0]))
    assert sorted(kept["run_id"].to_pylist()) == sorted(untouched["run_id"].to_pylist())
    replaced = after.filter(pa.compute.equal(after["ds"], DAYS[-1]))
    assert set(replaced["run_id"].to_pylist()) == {rerun.run_id}


def test_failure_mid_way_leaves_no_commit_and_no_files(
    spark: Any, demo: Path, tmp_path: Path
) -> None:
    """A product whose category vector has the wrong length makes scoring raise in one task."""
    root = tmp_path / "broken"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out"))
    spec = bs.load_spec(root / "conf" / "demo.yaml")
    assert bs.run(spec, run_date=DAYS[0], spark=spark).status == "committed"
    out = root / "out" / "predictions"
    version, files = DeltaTable(str(out)).version(), _files(out)

    products = DeltaTable(str(root / "data" / "products")).to_pyarrow_table()
    vectors = products["category_vec"].to_pylist()
    vectors[-1] = vectors[-1][:-1]
    from deltalake import write_deltalake

    column = products.schema.get_field_index("category_vec")
    write_deltalake(
        str(root / "data" / "products"),
        products.set_column(column, "category_vec", pa.array(vectors)),
        mode="overwrite",
    )
    with pytest.raises(Exception, match="category_vec"):
        bs.run(spec, run_date=DAYS[-1], spark=spark, force=True)
    assert DeltaTable(str(out)).version() == version
    assert _files(out) == files


def test_wide_layout_has_a_column_group_per_model(spark: Any, demo: Path, tmp_path: Path) -> None:
    text = (demo / "conf" / "demo.yaml").read_text()
    text = text.replace("layout: long", "layout: wide").replace(
        "../out/predictions", str(tmp_path / "wide")
    )
    (demo / "conf" / "wide.yaml").write_text(text)
    result = bs.run(demo / "conf" / "wide.yaml", run_date=DAYS[-1], spark=spark)
    table = _table(tmp_path / "wide")
    assert table.num_rows == result.rows == 3_000
    assert {"revenue_glm__prediction", "basket_class__probability", "return_risk__label"} <= set(
        table.column_names
    )


def test_score_dataframe_ad_hoc(spark: Any) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    X, y = load_breast_cancer(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(X, y)
    rows = [(i, [float(v) for v in X[i]]) for i in range(len(X))]
    df = spark.createDataFrame(rows, "customer_id long, features array<double>")
    preds = (
        bs.score(
            df,
            models=[
                {
                    "name": "churn",
                    "model": model,
                    "features": ["features"],
                    "output": "predict_proba",
                }
            ],
            id_columns=["customer_id"],
        )
        .toPandas()
        .sort_values("customer_id")
    )
    np.testing.assert_allclose(
        preds["prediction"].to_numpy(), model.predict_proba(X)[:, 1], rtol=1e-9
    )
    assert list(preds["label"]) == [str(c) for c in model.predict(X)]
    assert set(preds["model"]) == {"churn"}
