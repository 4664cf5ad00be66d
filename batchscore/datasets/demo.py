"""The demo: a small retail star schema, three trained models and the job spec that scores them.

Layout under `root`:

    data/sales      Delta, partitioned by ds   (the fact table)
    data/stores     Parquet folder, key store_id
    data/products   Delta, key product_id
    models/revenue_glm.joblib    Ridge regression            -> predict
    models/basket_class.joblib   3-class LogisticRegression  -> predict_proba
    models/return_risk.txt       LightGBM binary, text file  -> predict_proba
    out/predictions, out/monitoring   where the spec writes (created by the engine)

A LightGBM *text* model is a bare Booster without `classes_`: labels are "0"/"1" (the class
index), and it needs no sha256 pin (only pickles do).

The linear models are trained on standardized inputs and the scaler is then folded into
`coef_`/`intercept_`, so the saved estimators are plain Ridge/LogisticRegression objects that
take the raw features, exactly as the engine feeds them. A row whose store or product is
missing gets NaN features (left-join semantics): LightGBM handles that, the linear models
predict NaN (the honest answer; they train on rows with both dimensions present).
`python -m batchscore.datasets.demo ROOT CONF` builds it from the command line.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from batchscore.datasets._write import (
    Flow,
    FlowList,
    Quoted,
    clear,
    dense_list_array,
    relpath,
    sha256_file,
    write_delta,
    write_parquet_folder,
    write_spec,
)

END_DATE = date(2026, 11, 21)
N_STORES = 200
N_PRODUCTS = 2000
REGIONS = ("north", "south", "east", "west", "central", "coastal")
CATEGORIES = (
    "dairy", "bakery", "produce", "meat", "frozen", "pantry",
    "beverages", "snacks", "household", "personal_care", "baby", "pet",
)  # fmt: skip
PERISHABLE = 4  # the first four categories spoil within days
MISSING_RATE = 0.005  # share of fact rows whose store / product is not in the dimension
DISCOUNT_NULL_RATE = 0.02
BASKET_CLASSES = ("quick_trip", "top_up", "weekly_shop")

#: Each model's features, in the model's input order (as written into the spec).
FEATURES: dict[str, list[str]] = {
    "revenue_glm": [
        "price", "quantity", "stores.size_sqm", "stores.region_onehot",
        "products.base_price", "products.category_vec",
    ],
    "basket_class": [
        "price", "hour", "stores.size_sqm", "stores.region_onehot", "stores.footfall",
        "products.base_price", "products.category_vec",
    ],
    "return_risk": [
        "price", "quantity", "discount", "hour", "stores.footfall",
        "products.shelf_life_days", "products.category_vec",
    ],
}  # fmt: skip
MODEL_FILES = {
    "revenue_glm": "revenue_glm.joblib",
    "basket_class": "basket_class.joblib",
    "return_risk": "return_risk.txt",
}
MODEL_OUTPUTS = {
    "revenue_glm": "predict",
    "basket_class": "predict_proba",
    "return_risk": "predict_proba",
}


@dataclass(frozen=True)
class DemoInfo:
    """What `build_demo` wrote, and where."""

    root: Path
    conf_path: Path
    sales_path: Path
    stores_path: Path
    products_path: Path
    output_path: Path
    model_paths: dict[str, Path]
    model_sha256: dict[str, str]
    features: dict[str, list[str]]
    run_dates: list[str]
    rows_per_date: dict[str, int]
    sales_rows: int
    store_rows: int
    product_rows: int
    missing_store_rows: int
    missing_product_rows: int
    seconds: float


# --- data ----------------------------------------------------------------------------------------


def _onehot(codes: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(codes), width), dtype=np.float64)
    out[np.arange(len(codes)), codes] = 1.0
    return out


def _stores(rng: np.random.Generator) -> dict[str, np.ndarray]:
    region = rng.integers(0, len(REGIONS), N_STORES)
    size = np.round(rng.lognormal(np.log(1500.0), 0.45, N_STORES), 1)
    footfall = np.round(size * rng.uniform(2.0, 6.0, N_STORES) * (1 + 0.1 * region), 0)
    return {
        "store_id": np.arange(1, N_STORES + 1, dtype=np.int32),
        "region": region,
        "size_sqm": size,
        "footfall": footfall,
        "opened_year": rng.integers(1985, 2025, N_STORES).astype(np.int32),
    }


def _products(rng: np.random.Generator) -> dict[str, np.ndarray]:
    category = rng.integers(0, len(CATEGORIES), N_PRODUCTS)
    base_price = np.round(rng.lognormal(np.log(6.0), 0.7, N_PRODUCTS), 2) + 0.49
    shelf = np.where(
        category < PERISHABLE,
        rng.integers(2, 21, N_PRODUCTS),
        rng.integers(60, 731, N_PRODUCTS),
    ).astype(np.float64)
    return {
        "product_id": np.arange(1, N_PRODUCTS + 1, dtype=np.int32),
        "category": category,
        "base_price": base_price,
        "shelf_life_days": shelf,
    }


def _zipf_weights(n: int, s: float) -> np.ndarray:
    w: np.ndarray = 1.0 / np.arange(1, n + 1) ** s
    return w / float(w.sum())


def _sales(
    rng: np.random.Generator,
    stores: dict[str, np.ndarray],
    products: dict[str, np.ndarray],
    run_dates: list[str],
    rows_per_day: int,
) -> dict[str, np.ndarray]:
    n = len(run_dates) * rows_per_day
    store_ix = rng.choice(N_STORES, n, p=_zipf_weights(N_STORES, 0.6)[rng.permutation(N_STORES)])
    product_ix = rng.choice(
        N_PRODUCTS, n, p=_zipf_weights(N_PRODUCTS, 0.9)[rng.permutation(N_PRODUCTS)]
    )
    store_id = stores["store_id"][store_ix].copy()
    product_id = products["product_id"][product_ix].copy()
    # A few keys the dimensions do not know (new stores, delisted products): a left join keeps
    # those rows with nulls.
    bad_store = rng.random(n) < MISSING_RATE
    bad_product = rng.random(n) < MISSING_RATE
    store_id[bad_store] = rng.integers(N_STORES + 1, N_STORES + 11, int(bad_store.sum()))
    product_id[bad_product] = rng.integers(N_PRODUCTS + 1, N_PRODUCTS + 101, int(bad_product.sum()))

    base = products["base_price"][product_ix]
    base = np.where(bad_product, np.round(rng.lognormal(np.log(6.0), 0.7, n), 2) + 0.49, base)
    price = np.round(base * rng.lognormal(0.0, 0.05, n), 2)
    hour = rng.choice(
        np.arange(7, 23), n, p=np.array([1, 2, 3, 4, 5, 6, 6, 5, 5, 6, 8, 9, 8, 6, 4, 2]) / 80
    ).astype(np.int32)
    category = np.where(
        bad_product, rng.integers(0, len(CATEGORIES), n), products["category"][product_ix]
    )
    lam = 0.6 + 0.8 * (category >= len(CATEGORIES) - 4) + 0.4 * (hour >= 17)
    quantity = (1 + rng.poisson(lam)).astype(np.int32)
    discounted = rng.random(n) < 0.3
    discount = np.where(discounted, np.round(rng.uniform(0.05, 0.4, n), 2), 0.0)
    discount_null = rng.random(n) < DISCOUNT_NULL_RATE
    ds = np.repeat(np.array(run_dates, dtype=object), rows_per_day)
    return {
        "sale_id": np.arange(n, dtype=np.int64),
        "ds": ds,
        "store_id": store_id.astype(np.int32),
        "product_id": product_id.astype(np.int32),
        "price": price,
        "quantity": quantity,
        "discount": discount,
        "discount_null": discount_null,
        "hour": hour,
        "category": category,  # hidden truth for labels, not written
    }


# --- materializing features (fact LEFT JOIN dims) -------------------------------------------------


class _Star:
    """Fact columns plus keyed dimension columns, each as a 2-D float array (n, width)."""

    def __init__(
        self,
        fact: dict[str, np.ndarray],
        dims: dict[str, tuple[str, np.ndarray, dict[str, np.ndarray]]],
    ) -> None:
        self.fact = {
            k: (v if v.ndim == 2 else v.reshape(-1, 1)).astype(np.float64) for k, v in fact.items()
        }
        self.dims = dims
        self._rows: dict[str, np.ndarray] = {}

    def _dim_rows(self, table: str) -> np.ndarray:
        """Row index into the dimension per fact row, -1 where the key is missing."""
        if table not in self._rows:
            fk, keys, _ = self.dims[table]
            order = np.argsort(keys)
            fact_keys = self.fact[fk][:, 0]
            pos = np.clip(np.searchsorted(keys[order], fact_keys), 0, len(keys) - 1)
            found = keys[order][pos] == fact_keys
            self._rows[table] = np.where(found, order[pos], -1)
        return self._rows[table]

    def column(self, feature: str) -> np.ndarray:
        if "." not in feature:
            return self.fact[feature]
        table, name = feature.split(".", 1)
        rows = self._dim_rows(table)
        values = self.dims[table][2][name]
        values = values if values.ndim == 2 else values.reshape(-1, 1)
        out: np.ndarray = values[np.maximum(rows, 0)].astype(np.float64)
        out[rows < 0] = np.nan
        return out

    def matrix(self, features: list[str]) -> np.ndarray:
        return np.hstack([self.column(f) for f in features])

    def dims_present(self) -> np.ndarray:
        present = np.ones(len(next(iter(self.fact.values()))), dtype=bool)
        for table in self.dims:
            present &= self._dim_rows(table) >= 0
        return present


def _star_from_arrays(
    sales: dict[str, np.ndarray], stores: dict[str, np.ndarray], products: dict[str, np.ndarray]
) -> _Star:
    discount = np.where(sales["discount_null"], np.nan, sales["discount"])
    fact = {k: sales[k] for k in ("store_id", "product_id", "price", "quantity", "hour")}
    fact["discount"] = discount
    return _Star(
        fact,
        {
            "stores": (
                "store_id",
                stores["store_id"],
                {
                    "size_sqm": stores["size_sqm"],
                    "footfall": stores["footfall"],
                    "region_onehot": _onehot(stores["region"], len(REGIONS)),
                },
            ),
            "products": (
                "product_id",
                products["product_id"],
                {
                    "base_price": products["base_price"],
                    "shelf_life_days": products["shelf_life_days"],
                    "category_vec": _onehot(products["category"], len(CATEGORIES)),
                },
            ),
        },
    )


def _list_column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    width = len(col[0]) if len(col) else 0
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    return flat.reshape(-1, width)


def materialize_demo(
    root: Path, model: str, *, run_date: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read the demo tables back from disk and left-join them in numpy.

    Returns (X, sale_id): X in the spec's feature order for `model`, NaN where a value is null
    or the dimension row is missing; rows sorted by sale_id, limited to `run_date` if given.
    """
    from deltalake import DeltaTable

    data = Path(root) / "data"
    filters = [("ds", "=", run_date)] if run_date else None
    sales = DeltaTable(str(data / "sales")).to_pyarrow_table(filters=filters).sort_by("sale_id")
    stores = pq.read_table(data / "stores")
    products = DeltaTable(str(data / "products")).to_pyarrow_table()

    def num(table: pa.Table, name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(), dtype=np.float64)

    fact = {
        name: num(sales, name)
        for name in ("store_id", "product_id", "price", "quantity", "hour", "discount")
    }
    star = _Star(
        fact,
        {
            "stores": (
                "store_id",
                num(stores, "store_id"),
                {
                    "size_sqm": num(stores, "size_sqm"),
                    "footfall": num(stores, "footfall"),
                    "region_onehot": _list_column(stores, "region_onehot"),
                },
            ),
            "products": (
                "product_id",
                num(products, "product_id"),
                {
                    "base_price": num(products, "base_price"),
                    "shelf_life_days": num(products, "shelf_life_days"),
                    "category_vec": _list_column(products, "category_vec"),
                },
            ),
        },
    )
    return star.matrix(FEATURES[model]), sales.column("sale_id").to_numpy()


# --- models --------------------------------------------------------------------------------------


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    return (x - mean) / scale, mean, scale


def _fold(model: Any, mean: np.ndarray, scale: np.ndarray) -> Any:
    """Rewrite a linear model fitted on (x - mean) / scale so that it takes raw x."""
    coef = np.asarray(model.coef_, dtype=np.float64)
    folded = coef / scale
    model.intercept_ = model.intercept_ - folded @ mean
    model.coef_ = folded
    return model


def _train_models(
    star: _Star,
    sales: dict[str, np.ndarray],
    stores: dict[str, np.ndarray],
    models_dir: Path,
    seed: int,
) -> dict[str, Path]:
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression, Ridge

    rng = np.random.default_rng([seed, 4])
    n = len(sales["sale_id"])
    present = star.dims_present()
    cap = 50_000
    lin_rows = np.flatnonzero(present)
    if len(lin_rows) > cap:
        lin_rows = np.sort(rng.choice(lin_rows, cap, replace=False))
    all_rows = np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))

    discount = np.nan_to_num(star.fact["discount"][:, 0], nan=0.0)
    price = sales["price"]
    quantity = sales["quantity"].astype(np.float64)
    hour = sales["hour"].astype(np.float64)
    category = sales["category"]
    store_rows = star._dim_rows("stores")
    region = np.where(store_rows >= 0, stores["region"][np.maximum(store_rows, 0)], 0)

    # revenue: what the till rang up, with a little noise
    revenue = price * quantity * (1.0 - discount) + rng.normal(0, 0.5, n)
    # basket type: a latent basket size the till does not see directly
    latent = (
        0.9 * np.log(quantity) + 0.25 * (hour >= 17) + 0.15 * (category >= 8)
        + 0.1 * region - 0.04 * price + rng.logistic(0, 0.35, n)
    )  # fmt: skip
    cut = np.quantile(latent, [0.4, 0.8])
    basket = np.array(BASKET_CLASSES, dtype=object)[np.searchsorted(cut, latent)]
    # returns: short-lived goods bought late and deeply discounted come back more often
    shelf = np.where(category < PERISHABLE, 10.0, 300.0)
    late_perishable = (shelf < 30) & (hour >= 19)
    logit = -3.2 + 4.0 * discount + 1.2 * late_perishable + 0.05 * price + 0.15 * quantity
    returned = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int32)

    models_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: models_dir / file for name, file in MODEL_FILES.items()}
    for path in paths.values():  # only our own files: models/ may hold other builders' models
        clear(path)

    x, mean, scale = _standardize(star.matrix(FEATURES["revenue_glm"])[lin_rows])
    ridge = _fold(Ridge(alpha=1.0).fit(x, revenue[lin_rows]), mean, scale)
    joblib.dump(ridge, paths["revenue_glm"])

    x, mean, scale = _standardize(star.matrix(FEATURES["basket_class"])[lin_rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logreg = LogisticRegression(C=1.0, max_iter=300).fit(x, basket[lin_rows])
    joblib.dump(_fold(logreg, mean, scale), paths["basket_class"])

    gbm = lgb.LGBMClassifier(
        n_estimators=60, num_leaves=31, learning_rate=0.1, min_child_samples=20,
        random_state=seed, n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1,
    )  # fmt: skip
    gbm.fit(star.matrix(FEATURES["return_risk"])[all_rows], returned[all_rows])
    gbm.booster_.save_model(str(paths["return_risk"]))
    return paths


# --- build ---------------------------------------------------------------------------------------


def build_demo(
    root: Path,
    *,
    conf_path: Path,
    days: int = 7,
    rows_per_day: int = 20_000,
    seed: int = 0,
    monitoring: bool = False,
) -> DemoInfo:
    """Build the tables, train the models, write the spec to `conf_path` (`monitoring`: with a
    monitoring table under out/)."""
    if days < 1 or rows_per_day < 1:
        raise ValueError("days and rows_per_day must be at least 1")
    started = time.perf_counter()
    root = Path(root).resolve()
    conf_path = Path(conf_path).resolve()
    data = root / "data"
    run_dates = [(END_DATE - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    seeds = np.random.SeedSequence(seed).spawn(3)
    stores = _stores(np.random.default_rng(seeds[0]))
    products = _products(np.random.default_rng(seeds[1]))
    sales = _sales(np.random.default_rng(seeds[2]), stores, products, run_dates, rows_per_day)

    sales_table = pa.table(
        {
            "sale_id": pa.array(sales["sale_id"], pa.int64()),
            "ds": pa.array(sales["ds"], pa.string()),
            "store_id": pa.array(sales["store_id"], pa.int32()),
            "product_id": pa.array(sales["product_id"], pa.int32()),
            "price": pa.array(sales["price"], pa.float64()),
            "quantity": pa.array(sales["quantity"], pa.int32()),
            "discount": pa.array(sales["discount"], pa.float64(), mask=sales["discount_null"]),
            "hour": pa.array(sales["hour"], pa.int32()),
        }
    )
    stores_table = pa.table(
        {
            "store_id": pa.array(stores["store_id"], pa.int32()),
            "region": pa.array(np.array(REGIONS, dtype=object)[stores["region"]], pa.string()),
            "size_sqm": pa.array(stores["size_sqm"], pa.float64()),
            "region_onehot": dense_list_array(_onehot(stores["region"], len(REGIONS))),
            "footfall": pa.array(stores["footfall"], pa.float64()),
            "opened_year": pa.array(stores["opened_year"], pa.int32()),
        }
    )
    products_table = pa.table(
        {
            "product_id": pa.array(products["product_id"], pa.int32()),
            "category": pa.array(
                np.array(CATEGORIES, dtype=object)[products["category"]], pa.string()
            ),
            "base_price": pa.array(products["base_price"], pa.float64()),
            "category_vec": dense_list_array(_onehot(products["category"], len(CATEGORIES))),
            "shelf_life_days": pa.array(products["shelf_life_days"], pa.float64()),
        }
    )
    write_delta(data / "sales", sales_table, partition_by=["ds"])
    write_parquet_folder(data / "stores", stores_table, files=2)
    write_delta(data / "products", products_table)

    star = _star_from_arrays(sales, stores, products)
    with threadpool_limits(limits=1):  # see morpheus.py: BLAS/OpenMP workers thrash on busy cores
        paths = _train_models(star, sales, stores, root / "models", seed)
    digests = {name: sha256_file(path) for name, path in paths.items()}

    base = conf_path.parent
    spec: dict[str, Any] = {
        "name": "retail_daily",
        "tables": {
            "sales": Flow(
                path=relpath(data / "sales", base), format="delta", partition_by=FlowList(["ds"])
            ),
            "stores": Flow(path=relpath(data / "stores", base), format="parquet", key="store_id"),
            "products": Flow(
                path=relpath(data / "products", base), format="delta", key="product_id"
            ),
        },
        "source": {
            "table": "sales",
            "where": Quoted("ds = '{run_date}'"),
            "joins": [
                Flow(table="stores", on=Flow(store_id="store_id")),
                Flow(table="products", on=Flow(product_id="product_id")),
            ],
            "id_columns": FlowList(["sale_id", "ds"]),
        },
        "models": [],
        "output": {
            "path": relpath(root / "out" / "predictions", base),
            "layout": "long",
            "partition_by": FlowList(["ds"]),
            "mode": "overwrite_partitions",
        },
        "planner": {"factorize": "auto", "batch_models": True},
    }
    if monitoring:
        spec["monitoring"] = {"table": relpath(root / "out" / "monitoring", base)}
    for name in MODEL_FILES:
        entry: dict[str, Any] = {"name": name, "path": relpath(paths[name], base)}
        if paths[name].suffix != ".txt":  # pickles must be pinned; the LightGBM text file is not
            entry["sha256"] = digests[name]
        entry["features"] = FlowList(FEATURES[name])
        entry["output"] = MODEL_OUTPUTS[name]
        spec["models"].append(entry)
    write_spec(
        conf_path,
        spec,
        header=(
            "Demo job: score one day of retail sales with three models.\n"
            "Written by `python -m batchscore.datasets.demo`; paths are relative to this file.\n"
            "return_risk is a LightGBM text model (no pin needed, labels are class indices 0/1)."
        ),
    )

    unique, counts = np.unique(sales["ds"].astype(str), return_counts=True)
    return DemoInfo(
        root=root,
        conf_path=conf_path,
        sales_path=data / "sales",
        stores_path=data / "stores",
        products_path=data / "products",
        output_path=root / "out" / "predictions",
        model_paths=paths,
        model_sha256=digests,
        features={k: list(v) for k, v in FEATURES.items()},
        run_dates=run_dates,
        rows_per_date={str(d): int(c) for d, c in zip(unique, counts, strict=True)},
        sales_rows=len(sales["sale_id"]),
        store_rows=N_STORES,
        product_rows=N_PRODUCTS,
        missing_store_rows=int((sales["store_id"] > N_STORES).sum()),
        missing_product_rows=int((sales["product_id"] > N_PRODUCTS).sum()),
        seconds=time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchscore.datasets.demo",
        description="Build the demo data, models and spec.",
    )
    parser.add_argument("root", type=Path, help="folder for data/, models/ and out/")
    parser.add_argument("conf", type=Path, help="where to write the job spec YAML")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rows-per-day", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-monitoring", dest="monitoring", action="store_false")
    args = parser.parse_args(argv)
    info = build_demo(
        args.root,
        conf_path=args.conf,
        days=args.days,
        rows_per_day=args.rows_per_day,
        seed=args.seed,
        monitoring=args.monitoring,
    )
    print(
        f"demo: {info.sales_rows:,} sales over {len(info.run_dates)} days "
        f"({info.run_dates[0]} .. {info.run_dates[-1]}), {info.store_rows} stores, "
        f"{info.product_rows:,} products, {len(info.model_paths)} models; "
        f"spec {info.conf_path} ({info.seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
