"""Dataset builders: tables read back with exact schemas, specs load, pins match, models fit."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from deltalake import DeltaTable

from batchscore.datasets import (
    DemoInfo,
    build_demo,
    build_flights,
    build_walmart,
    load_morpheus,
    materialize_demo,
    materialize_flights,
    materialize_walmart,
)
from batchscore.datasets._write import (
    VECTOR_STRUCT,
    dense_list_array,
    sparse_vector_array,
    vector_struct_to_csr,
)
from batchscore.datasets.demo import main as demo_main
from batchscore.spec import load_spec
from tests.conftest import SHARED_DATA

SHARED = SHARED_DATA
needs_morpheus = pytest.mark.usefixtures("shared_data")  # skips, saying why, without the data

DAYS, ROWS_PER_DAY = 3, 400


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _delta(path: Path) -> pa.Table:
    return DeltaTable(str(path)).to_pyarrow_table()


def _type(t: pa.DataType) -> str:
    """Arrow type text, lists without their element name (Delta says element, Arrow says item)."""
    return f"list<{_type(t.value_type)}>" if pa.types.is_list(t) else str(t)


def _schema(table: pa.Table) -> dict[str, str]:
    return {f.name: _type(f.type) for f in table.schema}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoInfo:
    root = tmp_path_factory.mktemp("demo")
    return build_demo(
        root / "demo", conf_path=root / "conf" / "demo.yaml", days=DAYS, rows_per_day=ROWS_PER_DAY
    )


# --- demo ----------------------------------------------------------------------------------------


def test_demo_sales_fact(demo: DemoInfo) -> None:
    sales = _delta(demo.sales_path).sort_by("sale_id")
    assert _schema(sales) == {
        "sale_id": "int64",
        "ds": "string",
        "store_id": "int32",
        "product_id": "int32",
        "price": "double",
        "quantity": "int32",
        "discount": "double",
        "hour": "int32",
    }
    assert DeltaTable(str(demo.sales_path)).metadata().partition_columns == ["ds"]
    assert sales.num_rows == demo.sales_rows == DAYS * ROWS_PER_DAY
    assert demo.run_dates == ["2026-11-19", "2026-11-20", "2026-11-21"]
    ds = sales.column("ds").to_pylist()
    assert {d: ds.count(d) for d in demo.run_dates} == demo.rows_per_date
    assert all(v == ROWS_PER_DAY for v in demo.rows_per_date.values())
    ids = sales.column("sale_id").to_numpy()
    assert len(np.unique(ids)) == len(ids)
    assert 0 < sales.column("discount").null_count < 0.06 * sales.num_rows
    store_ids = sales.column("store_id").to_numpy()
    product_ids = sales.column("product_id").to_numpy()
    assert demo.missing_store_rows == int((store_ids > demo.store_rows).sum()) > 0
    assert demo.missing_product_rows == int((product_ids > demo.product_rows).sum()) > 0
    assert demo.missing_store_rows < 0.02 * sales.num_rows
    assert (sales.column("price").to_numpy() > 0).all()
    assert (sales.column("quantity").to_numpy() >= 1).all()


def test_demo_dimensions(demo: DemoInfo) -> None:
    assert sorted(p.suffix for p in demo.stores_path.iterdir()) == [".parquet", ".parquet"]
    stores = pq.read_table(demo.stores_path)
    assert _schema(stores) == {
        "store_id": "int32",
        "region": "string",
        "size_sqm": "double",
        "region_onehot": "list<double>",
        "footfall": "double",
        "opened_year": "int32",
    }
    assert stores.num_rows == demo.store_rows == 200
    onehot = np.array(stores.column("region_onehot").to_pylist())
    assert onehot.shape == (200, 6) and (onehot.sum(axis=1) == 1).all()

    products = _delta(demo.products_path)
    assert _schema(products) == {
        "product_id": "int32",
        "category": "string",
        "base_price": "double",
        "category_vec": "list<double>",
        "shelf_life_days": "double",
    }
    assert products.num_rows == demo.product_rows == 2000
    vec = np.array(products.column("category_vec").to_pylist())
    assert vec.shape == (2000, 12) and (vec.sum(axis=1) == 1).all()
    keys = products.column("product_id").to_numpy()
    assert len(np.unique(keys)) == len(keys)


def test_demo_spec(demo: DemoInfo) -> None:
    text = demo.conf_path.read_text()
    assert "on: {store_id: store_id}" in text  # written unquoted, as users write it
    assert "../demo/" in text  # relative to the spec's folder
    spec = load_spec(demo.conf_path, run_date="2026-11-20")
    assert spec.source.table == "sales"
    assert spec.source.where == "ds = '2026-11-20'"
    assert spec.source.id_columns == ["sale_id", "ds"]
    assert [(j.table, j.on) for j in spec.source.joins] == [
        ("stores", {"store_id": "store_id"}),
        ("products", {"product_id": "product_id"}),
    ]
    assert Path(spec.tables["sales"].path) == demo.sales_path
    assert spec.tables["sales"].format == "delta" and spec.tables["sales"].partition_by == ["ds"]
    assert Path(spec.tables["stores"].path) == demo.stores_path
    assert (spec.tables["stores"].format, spec.tables["stores"].key) == ("parquet", "store_id")
    assert (spec.tables["products"].format, spec.tables["products"].key) == ("delta", "product_id")
    assert Path(spec.output.path) == demo.output_path
    assert (spec.output.layout, spec.output.mode) == ("long", "overwrite_partitions")
    assert spec.output.partition_by == ["ds"]
    models = {m.name: m for m in spec.models}
    assert list(models) == ["revenue_glm", "basket_class", "return_risk"]
    assert models["revenue_glm"].output == "predict"
    assert models["basket_class"].output == models["return_risk"].output == "predict_proba"
    for name, model in models.items():
        assert Path(model.path) == demo.model_paths[name]
        assert model.features == demo.features[name]
    for name in ("revenue_glm", "basket_class"):
        assert models[name].sha256 == _sha(demo.model_paths[name]) == demo.model_sha256[name]
    assert models["return_risk"].sha256 is None  # a LightGBM text file needs no pin


def test_demo_models_predict_on_materialized_features(demo: DemoInfo) -> None:
    run_date = demo.run_dates[-1]
    x, ids = materialize_demo(demo.root, "revenue_glm", run_date=run_date)
    assert len(ids) == demo.rows_per_date[run_date] and (np.diff(ids) > 0).all()
    ridge = joblib.load(demo.model_paths["revenue_glm"])
    assert x.shape[1] == ridge.n_features_in_ == 2 + 1 + 6 + 1 + 12
    complete = ~np.isnan(x).any(axis=1)
    assert 0.95 < complete.mean() < 1.0  # missing dimension rows give NaN features
    revenue = ridge.predict(x[complete])
    assert np.isfinite(revenue).all() and revenue.mean() > 0

    x, _ = materialize_demo(demo.root, "basket_class", run_date=run_date)
    logreg = joblib.load(demo.model_paths["basket_class"])
    assert list(logreg.classes_) == ["quick_trip", "top_up", "weekly_shop"]
    assert x.shape[1] == logreg.n_features_in_
    complete = ~np.isnan(x).any(axis=1)
    proba = logreg.predict_proba(x[complete])
    assert proba.shape == (int(complete.sum()), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)

    x, _ = materialize_demo(demo.root, "return_risk")
    booster = lgb.Booster(model_file=str(demo.model_paths["return_risk"]))
    assert booster.num_feature() == x.shape[1] == 5 + 1 + 12
    assert booster.num_trees() == 60
    assert np.isnan(x).any()  # discount nulls and missing dimensions reach LightGBM as NaN
    p = booster.predict(x)
    assert p.shape == (demo.sales_rows,) and ((p > 0) & (p < 1)).all()


def test_demo_is_deterministic(tmp_path: Path, demo: DemoInfo) -> None:
    again = build_demo(
        tmp_path / "demo", conf_path=tmp_path / "demo.yaml", days=DAYS, rows_per_day=ROWS_PER_DAY
    )
    for a, b in [
        (_delta(demo.sales_path).sort_by("sale_id"), _delta(again.sales_path).sort_by("sale_id")),
        (pq.read_table(demo.stores_path), pq.read_table(again.stores_path)),
        (_delta(demo.products_path), _delta(again.products_path)),
    ]:
        assert a.equals(b)
    assert again.model_sha256 == demo.model_sha256
    assert _sha(again.model_paths["return_risk"]) == _sha(demo.model_paths["return_risk"])
    other = build_demo(
        tmp_path / "s1", conf_path=tmp_path / "s1.yaml", days=1, rows_per_day=50, seed=1
    )
    assert (
        not _delta(other.sales_path)
        .sort_by("sale_id")
        .equals(_delta(demo.sales_path).sort_by("sale_id").slice(0, 50))
    )


def test_demo_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "conf" / "demo.yaml"
    assert demo_main([str(tmp_path / "d"), str(conf), "--days", "2", "--rows-per-day", "60"]) == 0
    assert "120 sales over 2 days" in capsys.readouterr().out
    spec = load_spec(conf, run_date="2026-11-21")
    assert Path(spec.tables["sales"].path) == (tmp_path / "d" / "data" / "sales").resolve()


# --- writing helpers -----------------------------------------------------------------------------


def test_vector_struct_round_trip() -> None:
    lil = sp.random(7, 11, density=0.3, random_state=0, format="lil")
    lil[3, :] = 0  # an all-zero row is an empty sparse vector
    m = lil.tocsr()
    arr = sparse_vector_array(m)
    assert arr.type == VECTOR_STRUCT
    assert arr[0]["type"].as_py() == 0 and arr[0]["size"].as_py() == 11
    back = vector_struct_to_csr(arr)
    assert back.shape == (7, 11)
    np.testing.assert_array_equal(back.toarray(), m.toarray())
    dense = np.arange(6.0).reshape(3, 2)
    assert dense_list_array(dense).to_pylist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


# --- Morpheus ------------------------------------------------------------------------------------


def _check_booster(path: Path, x: sp.csr_matrix, n_classes: int) -> None:
    booster = lgb.Booster(model_file=str(path))
    assert booster.num_feature() == x.shape[1]
    p = booster.predict(x[:2000])
    assert p.shape == ((2000, n_classes) if n_classes > 2 else (2000,))


@needs_morpheus
def test_walmart(tmp_path: Path) -> None:
    info = build_walmart(
        tmp_path / "w",
        conf_path=tmp_path / "conf" / "walmart.yaml",
        shared=SHARED,
        train_rows=20_000,
    )
    assert (info.n_rows, info.n_features, info.vector_writer) == (421_570, 2_441, "pyarrow")
    fact = _delta(info.fact_path).sort_by("sale_id")
    assert _schema(fact) == {
        "sale_id": "int64",
        "ds": "string",
        "indicator_id": "int32",
        "store_id": "int32",
        "s_v1": "double",
    }
    assert fact.num_rows == 421_570
    np.testing.assert_array_equal(fact.column("sale_id").to_numpy(), np.arange(421_570))
    assert set(fact.column("ds").to_pylist()) == {"2026-11-21"}

    data = load_morpheus(SHARED, "Walmart")
    indicators = pq.read_table(info.dim_paths["indicators"])
    assert _schema(indicators)["indicator_id"] == "int32"
    assert indicators.schema.field("onehot").type == VECTOR_STRUCT
    r1 = vector_struct_to_csr(indicators.sort_by("indicator_id").column("onehot"))
    assert (r1 != data.dims[0]).nnz == 0
    stores = _delta(info.dim_paths["stores"]).sort_by("store_id")
    assert _schema(stores) == {"store_id": "int32", "onehot": "list<double>"}
    np.testing.assert_array_equal(
        np.array(stores.column("onehot").to_pylist()), data.dims[1].toarray()
    )
    # The fact table joined with its dimensions on the written keys is the materialized matrix.
    x, y = materialize_walmart(SHARED)
    rows = np.arange(0, 421_570, 997)
    s_v1 = fact.column("s_v1").to_numpy()[rows].reshape(-1, 1)
    ind = fact.column("indicator_id").to_numpy()[rows] - 1
    st = fact.column("store_id").to_numpy()[rows] - 1
    joined = sp.hstack([sp.csr_matrix(s_v1), r1[ind], sp.csr_matrix(data.dims[1].toarray()[st])])
    np.testing.assert_array_equal(joined.toarray(), x[rows].toarray())

    spec = load_spec(info.conf_path)
    assert spec.source.where is None
    assert [(j.table, j.on) for j in spec.source.joins] == [
        ("indicators", {"indicator_id": "indicator_id"}),
        ("stores", {"store_id": "store_id"}),
    ]
    assert (spec.tables["indicators"].format, spec.tables["stores"].format) == ("parquet", "delta")
    models = {m.name: m for m in spec.models}
    assert models["walmart_logreg"].sha256 == _sha(info.model_paths["walmart_logreg"])
    assert all(m.features == ["s_v1", "indicators.onehot", "stores.onehot"] for m in spec.models)
    assert all(m.output == "predict_proba" for m in spec.models)
    assert Path(spec.output.path) == info.output_path
    logreg = joblib.load(info.model_paths["walmart_logreg"])
    assert list(logreg.classes_) == [1, 2, 3, 4, 5, 6, 7]
    proba = logreg.predict_proba(x)
    assert proba.shape == (421_570, 7)
    assert (logreg.classes_[proba.argmax(axis=1)] == y).mean() > 0.25  # beats the 23% majority
    _check_booster(info.model_paths["walmart_lgbm"], x, 7)


def _is_spark_vector(spark: Any, path: Path) -> bool:
    from pyspark.ml.linalg import VectorUDT

    return isinstance(spark.read.parquet(str(path)).schema["onehot"].dataType, VectorUDT)


@pytest.mark.spark
@needs_morpheus
def test_flights_with_spark_vectors(tmp_path: Path, spark: Any) -> None:
    info = build_flights(
        tmp_path / "f", conf_path=tmp_path / "flights.yaml", shared=SHARED, spark=spark,
        train_rows=20_000,
    )  # fmt: skip
    assert (info.n_rows, info.n_features, info.vector_writer) == (66_548, 13_669, "spark")
    fact = _delta(info.fact_path).sort_by("flight_id")
    assert _schema(fact) == {
        "flight_id": "int64",
        "ds": "string",
        "airline_id": "int32",
        "origin_id": "int32",
        "dest_id": "int32",
        "s_feats": "list<double>",
    }
    data = load_morpheus(SHARED, "Flights")
    # Spark wrote origins/dests with its VectorUDT; airlines is a Delta table with the struct.
    for name, r in [("origins", data.dims[1]), ("dests", data.dims[2])]:
        assert _is_spark_vector(spark, info.dim_paths[name])
        table = pq.read_table(info.dim_paths[name])
        key = {"origins": "origin_id", "dests": "dest_id"}[name]
        back = vector_struct_to_csr(table.sort_by(key).column("onehot"))
        assert (back != r).nnz == 0
    airlines = _delta(info.dim_paths["airlines"]).sort_by("airline_id")
    assert (vector_struct_to_csr(airlines.column("onehot")) != data.dims[0]).nnz == 0

    spec = load_spec(info.conf_path)
    assert spec.source.id_columns == ["flight_id", "ds"]
    assert [j.table for j in spec.source.joins] == ["airlines", "origins", "dests"]
    models = {m.name: m for m in spec.models}
    assert models["flights_logreg"].sha256 == _sha(info.model_paths["flights_logreg"])
    assert models["flights_lgbm"].sha256 is None
    x, y = materialize_flights(SHARED)
    assert x.shape == (66_548, 13_669)
    logreg = joblib.load(info.model_paths["flights_logreg"])
    assert list(logreg.classes_) == [0, 1]
    assert (logreg.predict(x) == y).mean() > 0.8
    _check_booster(info.model_paths["flights_lgbm"], x, 2)
