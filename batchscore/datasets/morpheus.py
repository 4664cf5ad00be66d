"""Star-schema tables, models and specs from the real Morpheus datasets (Walmart, Flights).

The source files (`<data folder>/<Dataset>/`, see docs/datasets.md) are a fact table S,
dimension tables R1..Rk as sparse one-hot matrices, and 1-based foreign keys. The builders turn
them into what a user of batchscore would have:

Walmart (421,570 fact rows, 2,441 materialized features, 7 classes)
    data/walmart/sales        Delta, partitioned by ds (one partition, 2026-11-21)
                              sale_id int64 (= row i), ds, indicator_id int32, store_id int32,
                              s_v1 double
    data/walmart/indicators   Parquet, key indicator_id (1..2,340), onehot: sparse vector(2,387)
    data/walmart/stores       Delta, key store_id (1..45), onehot: array<double>(53)
    models/walmart_logreg.joblib   multinomial LogisticRegression (classes_ 1..7)
    models/walmart_lgbm.txt        LightGBM multiclass text model (class index k = label k+1)

Flights (66,548 fact rows, 13,669 materialized features, binary)
    data/flights/flights      Delta, partitioned by ds (one partition, 2026-11-21)
                              flight_id int64 (= row i), ds, airline_id, origin_id, dest_id int32,
                              s_feats array<double>(20)
    data/flights/airlines     Delta, key airline_id (1..540), onehot: sparse vector struct(718)
    data/flights/origins      Parquet, key origin_id (1..3,167), onehot: sparse vector(6,464)
    data/flights/dests        Parquet, key dest_id (1..3,170), onehot: sparse vector(6,467)
    models/flights_logreg.joblib   binary LogisticRegression (classes_ 0, 1)
    models/flights_lgbm.txt        LightGBM binary text model

Sparse-vector Parquet dims are written by Spark (`VectorUDT`) when a session is passed, else as
the same struct layout with pyarrow (`struct<type int8, size int32, indices, values>`).
Keys keep the files' 1-based numbering, so dimension row j has key j+1 and fact row i joins
to it when FK[i] = j+1. `materialize_walmart` / `materialize_flights` give the joined matrix
in the spec's feature order, so tests can compare the engine row by row (row i = id i).

`python -m batchscore.datasets.morpheus walmart|flights ROOT CONF --shared DIR [--spark]`.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import scipy.io
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from batchscore.datasets._write import (
    Flow,
    FlowList,
    clear,
    dense_list_array,
    relpath,
    sha256_file,
    sparse_vector_array,
    write_delta,
    write_parquet_folder,
    write_spark_vector_parquet,
    write_spec,
)

RUN_DATE = "2026-11-21"

WALMART_FEATURES = ["s_v1", "indicators.onehot", "stores.onehot"]
FLIGHTS_FEATURES = ["s_feats", "airlines.onehot", "origins.onehot", "dests.onehot"]


@dataclass(frozen=True)
class MorpheusData:
    """One Morpheus star schema as loaded from its files."""

    name: str
    y: np.ndarray  # (n,) labels
    s: sp.csr_matrix  # (n, d_S) fact features
    fks: list[np.ndarray]  # per dimension: (n,) 1-based foreign keys
    dims: list[sp.csr_matrix]  # per dimension: (n_Ri, d_Ri), row j = key j+1

    @property
    def n_rows(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.s.shape[1]) + sum(int(r.shape[1]) for r in self.dims)

    def materialize(self) -> sp.csr_matrix:
        """[S, R1[FK1], R2[FK2], ...] as CSR float64: the joined feature matrix."""
        blocks = [self.s] + [r[fk - 1] for r, fk in zip(self.dims, self.fks, strict=True)]
        return sp.hstack(blocks, format="csr", dtype=np.float64)


@dataclass(frozen=True)
class MorpheusInfo:
    """What a Morpheus builder wrote, and where."""

    dataset: str
    root: Path
    conf_path: Path
    fact_path: Path
    dim_paths: dict[str, Path]
    output_path: Path
    model_paths: dict[str, Path]
    model_sha256: dict[str, str]
    features: list[str]
    id_columns: list[str]
    run_date: str
    n_rows: int
    n_features: int
    train_rows: int
    vector_writer: str  # "spark" (VectorUDT) or "pyarrow" (struct layout)
    seconds: float


class WalmartInfo(MorpheusInfo):
    """`build_walmart`'s result."""


class FlightsInfo(MorpheusInfo):
    """`build_flights`'s result."""


# --- loading -------------------------------------------------------------------------------------


def _dataset_dir(shared: Path, name: str) -> Path:
    shared = Path(shared)
    for candidate in (shared / name, shared / "data" / "morpheus" / name, shared):
        if (candidate / "MLY.csv").is_file():
            return candidate
    raise FileNotFoundError(
        f"Morpheus dataset '{name}' not found under {shared}: expected {shared / name / 'MLY.csv'}"
    )


def _column(path: Path) -> np.ndarray:
    """A one-column CSV with the header "V1"."""
    return np.loadtxt(path, skiprows=1, dtype=np.int64, ndmin=1)


def _mm(path: Path) -> sp.csr_matrix:
    return sp.csr_matrix(scipy.io.mmread(path), dtype=np.float64)


def load_morpheus(shared: Path, name: str) -> MorpheusData:
    """Read a Morpheus dataset ('Walmart' or 'Flights') from its folder."""
    folder = _dataset_dir(shared, name)
    y = _column(folder / "MLY.csv")
    if (folder / "MLSraw.txt").is_file():
        s = sp.csr_matrix(_column(folder / "MLSraw.txt").astype(np.float64).reshape(-1, 1))
    else:
        s = _mm(folder / "MLSSparse.txt")
    fks: list[np.ndarray] = []
    dims: list[sp.csr_matrix] = []
    k = 1
    while (folder / f"MLFK{k}.csv").is_file():
        fks.append(_column(folder / f"MLFK{k}.csv"))
        dims.append(_mm(folder / f"MLR{k}Sparse.txt"))
        k += 1
    for i, (fk, r) in enumerate(zip(fks, dims, strict=True), start=1):
        if len(fk) != len(y) or fk.min() < 1 or fk.max() > r.shape[0]:
            raise ValueError(f"{folder}/MLFK{i}.csv does not fit R{i} ({r.shape[0]} rows)")
    if s.shape[0] != len(y):
        raise ValueError(f"{folder}: S has {s.shape[0]} rows but MLY.csv has {len(y)}")
    return MorpheusData(name=folder.name, y=y, s=s, fks=fks, dims=dims)


def materialize_walmart(shared: Path) -> tuple[sp.csr_matrix, np.ndarray]:
    """Walmart's joined features [s_v1, indicators.onehot, stores.onehot] (CSR) and labels."""
    data = load_morpheus(shared, "Walmart")
    return data.materialize(), data.y


def materialize_flights(shared: Path) -> tuple[sp.csr_matrix, np.ndarray]:
    """Flights' joined features [s_feats, airlines, origins, dests] (CSR) and labels."""
    data = load_morpheus(shared, "Flights")
    return data.materialize(), data.y


# --- training ------------------------------------------------------------------------------------


def _train_rows(n: int, train_rows: int, seed: int) -> np.ndarray:
    if train_rows >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, 7])
    return np.sort(rng.choice(n, train_rows, replace=False))


def _fit_logreg(x: sp.csr_matrix, y: np.ndarray, fact_cols: int, max_iter: int) -> Any:
    """LogisticRegression on CSR; the fact columns are scaled for lbfgs, then folded back.

    Callers train under `threadpool_limits(1)` (and LightGBM with n_jobs=1): on a 2-core machine
    that is busy with other work (CI, a Spark job), spinning BLAS/OpenMP workers made training
    ~10x slower than one thread, and one thread also keeps the result bit-for-bit reproducible.
    """
    from sklearn.linear_model import LogisticRegression

    scale = np.ones(x.shape[1])
    fact = x[:, :fact_cols].toarray()
    std = fact.std(axis=0)
    scale[:fact_cols] = np.where(std > 0, std, 1.0)
    xs = sp.csr_matrix(x @ sp.diags(1.0 / scale))
    model = LogisticRegression(C=1.0, max_iter=max_iter, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a not-quite-converged lbfgs is fine for a benchmark
        model.fit(xs, y)
    model.coef_ = model.coef_ / scale
    return model


def _fit_lgbm(x: sp.csr_matrix, y: np.ndarray, n_estimators: int, seed: int) -> Any:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(
        n_estimators=n_estimators, num_leaves=31, learning_rate=0.1, min_child_samples=20,
        random_state=seed, n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1,
    )  # fmt: skip
    model.fit(x, y)
    return model


# --- writing -------------------------------------------------------------------------------------


def _write_vector_dim(
    path: Path, key: str, matrix: sp.csr_matrix, spark: Any, *, delta: bool = False
) -> None:
    """A dimension (key int32 = row + 1, onehot: sparse vector) as Parquet or Delta."""
    keys = np.arange(1, matrix.shape[0] + 1, dtype=np.int32)
    if spark is not None and not delta:
        write_spark_vector_parquet(spark, path, key, keys, matrix, "onehot")
        return
    table = pa.table({key: pa.array(keys, pa.int32()), "onehot": sparse_vector_array(matrix)})
    if delta:
        write_delta(path, table)
    else:
        write_parquet_folder(path, table)


def _spec(
    *,
    name: str,
    conf_path: Path,
    fact: str,
    fact_path: Path,
    id_column: str,
    dims: list[tuple[str, Path, str, str]],
    models: list[tuple[str, Path, str | None]],
    features: list[str],
    output_path: Path,
) -> dict[str, Any]:
    base = conf_path.parent
    tables: dict[str, Any] = {
        fact: Flow(path=relpath(fact_path, base), format="delta", partition_by=FlowList(["ds"]))
    }
    joins = []
    for table, path, fmt, key in dims:
        tables[table] = Flow(path=relpath(path, base), format=fmt, key=key)
        joins.append(Flow(table=table, on=Flow({key: key})))
    entries = []
    for model, path, digest in models:
        entry: dict[str, Any] = {"name": model, "path": relpath(path, base)}
        if digest is not None:
            entry["sha256"] = digest
        entry["features"] = FlowList(features)
        entry["output"] = "predict_proba"
        entries.append(entry)
    return {
        "name": name,
        "tables": tables,
        "source": {"table": fact, "joins": joins, "id_columns": FlowList([id_column, "ds"])},
        "models": entries,
        "output": {
            "path": relpath(output_path, base),
            "layout": "long",
            "partition_by": FlowList(["ds"]),
            "mode": "overwrite_partitions",
        },
        "planner": {"factorize": "auto", "batch_models": True},
    }


def _save_models(
    models_dir: Path, prefix: str, logreg: Any, lgbm: Any
) -> tuple[dict[str, Path], dict[str, str]]:
    models_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        f"{prefix}_logreg": models_dir / f"{prefix}_logreg.joblib",
        f"{prefix}_lgbm": models_dir / f"{prefix}_lgbm.txt",
    }
    for path in paths.values():
        clear(path)
    joblib.dump(logreg, paths[f"{prefix}_logreg"])
    lgbm.booster_.save_model(str(paths[f"{prefix}_lgbm"]))
    return paths, {name: sha256_file(path) for name, path in paths.items()}


def build_walmart(
    root: Path, *, conf_path: Path, shared: Path, spark: Any = None,
    train_rows: int = 60_000, seed: int = 0,
) -> WalmartInfo:  # fmt: skip
    """Write Walmart's star schema, train its two models and write the spec to `conf_path`."""
    started = time.perf_counter()
    root, conf_path = Path(root).resolve(), Path(conf_path).resolve()
    data = load_morpheus(shared, "Walmart")
    n = data.n_rows
    folder = root / "data" / "walmart"
    fact_path, ind_path, store_path = folder / "sales", folder / "indicators", folder / "stores"

    fact = pa.table(
        {
            "sale_id": pa.array(np.arange(n, dtype=np.int64)),
            "ds": pa.array(np.full(n, RUN_DATE, dtype=object), pa.string()),
            "indicator_id": pa.array(data.fks[0].astype(np.int32)),
            "store_id": pa.array(data.fks[1].astype(np.int32)),
            "s_v1": pa.array(data.s.toarray()[:, 0].astype(np.float64)),
        }
    )
    write_delta(fact_path, fact, partition_by=["ds"])
    _write_vector_dim(ind_path, "indicator_id", data.dims[0], spark)
    stores = pa.table(
        {
            "store_id": pa.array(np.arange(1, data.dims[1].shape[0] + 1, dtype=np.int32)),
            "onehot": dense_list_array(data.dims[1].toarray()),
        }
    )
    write_delta(store_path, stores)

    rows = _train_rows(n, train_rows, seed)
    x = data.materialize()[rows]
    y = data.y[rows]
    with threadpool_limits(limits=1):  # see _fit_logreg
        logreg = _fit_logreg(x, y, fact_cols=1, max_iter=200)
        lgbm = _fit_lgbm(x, y, n_estimators=30, seed=seed)
    paths, digests = _save_models(root / "models", "walmart", logreg, lgbm)

    output_path = root / "out" / "walmart_predictions"
    spec = _spec(
        name="walmart_weekly", conf_path=conf_path, fact="sales", fact_path=fact_path,
        id_column="sale_id",
        dims=[("indicators", ind_path, "parquet", "indicator_id"),
              ("stores", store_path, "delta", "store_id")],
        models=[("walmart_logreg", paths["walmart_logreg"], digests["walmart_logreg"]),
                ("walmart_lgbm", paths["walmart_lgbm"], None)],
        features=WALMART_FEATURES, output_path=output_path,
    )  # fmt: skip
    write_spec(
        conf_path,
        spec,
        header=(
            "Walmart (Morpheus): 421,570 sales x 2,441 joined features, 7 classes.\n"
            "Written by batchscore.datasets.morpheus.build_walmart; paths relative to this file.\n"
            "No `where`: every run scores all rows (they sit in partition ds=2026-11-21).\n"
            "walmart_lgbm is a LightGBM text model: its labels are class indices 0..6 (= 1..7)."
        ),
    )
    return WalmartInfo(
        dataset="Walmart", root=root, conf_path=conf_path, fact_path=fact_path,
        dim_paths={"indicators": ind_path, "stores": store_path}, output_path=output_path,
        model_paths=paths, model_sha256=digests, features=list(WALMART_FEATURES),
        id_columns=["sale_id", "ds"], run_date=RUN_DATE, n_rows=n, n_features=data.n_features,
        train_rows=len(rows), vector_writer="spark" if spark is not None else "pyarrow",
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def build_flights(
    root: Path, *, conf_path: Path, shared: Path, spark: Any = None,
    train_rows: int = 40_000, seed: int = 0,
) -> FlightsInfo:  # fmt: skip
    """Write Flights' star schema, train its two models and write the spec to `conf_path`."""
    started = time.perf_counter()
    root, conf_path = Path(root).resolve(), Path(conf_path).resolve()
    data = load_morpheus(shared, "Flights")
    n = data.n_rows
    folder = root / "data" / "flights"
    fact_path = folder / "flights"
    dim_names = [("airlines", "airline_id"), ("origins", "origin_id"), ("dests", "dest_id")]
    dim_paths = {name: folder / name for name, _ in dim_names}

    fact = pa.table(
        {
            "flight_id": pa.array(np.arange(n, dtype=np.int64)),
            "ds": pa.array(np.full(n, RUN_DATE, dtype=object), pa.string()),
            **{
                key: pa.array(fk.astype(np.int32))
                for (_, key), fk in zip(dim_names, data.fks, strict=True)
            },
            "s_feats": dense_list_array(data.s.toarray()),
        }
    )
    write_delta(fact_path, fact, partition_by=["ds"])
    formats = {"airlines": "delta", "origins": "parquet", "dests": "parquet"}
    for (name, key), matrix in zip(dim_names, data.dims, strict=True):
        _write_vector_dim(dim_paths[name], key, matrix, spark, delta=formats[name] == "delta")

    rows = _train_rows(n, train_rows, seed)
    x = data.materialize()[rows]
    y = data.y[rows]
    with threadpool_limits(limits=1):  # see _fit_logreg
        logreg = _fit_logreg(x, y, fact_cols=int(data.s.shape[1]), max_iter=200)
        lgbm = _fit_lgbm(x, y, n_estimators=50, seed=seed)
    paths, digests = _save_models(root / "models", "flights", logreg, lgbm)

    output_path = root / "out" / "flights_predictions"
    spec = _spec(
        name="flights_daily", conf_path=conf_path, fact="flights", fact_path=fact_path,
        id_column="flight_id",
        dims=[(name, dim_paths[name], formats[name], key) for name, key in dim_names],
        models=[("flights_logreg", paths["flights_logreg"], digests["flights_logreg"]),
                ("flights_lgbm", paths["flights_lgbm"], None)],
        features=FLIGHTS_FEATURES, output_path=output_path,
    )  # fmt: skip
    write_spec(
        conf_path,
        spec,
        header=(
            "Flights (Morpheus): 66,548 flights x 13,669 joined features, binary label.\n"
            "Written by batchscore.datasets.morpheus.build_flights; paths relative to this file.\n"
            "No `where`: every run scores all rows (they sit in partition ds=2026-11-21)."
        ),
    )
    return FlightsInfo(
        dataset="Flights", root=root, conf_path=conf_path, fact_path=fact_path,
        dim_paths=dim_paths, output_path=output_path, model_paths=paths, model_sha256=digests,
        features=list(FLIGHTS_FEATURES), id_columns=["flight_id", "ds"], run_date=RUN_DATE,
        n_rows=n, n_features=data.n_features, train_rows=len(rows),
        vector_writer="spark" if spark is not None else "pyarrow",
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchscore.datasets.morpheus",
        description="Build a Morpheus dataset's tables, models and job spec.",
    )
    parser.add_argument("dataset", choices=["walmart", "flights"])
    parser.add_argument("root", type=Path, help="folder for data/, models/ and out/")
    parser.add_argument("conf", type=Path, help="where to write the job spec YAML")
    parser.add_argument("--shared", type=Path, required=True, help="the morpheus data folder")
    parser.add_argument("--spark", action="store_true", help="write vector dims with Spark")
    parser.add_argument("--train-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spark = None
    if args.spark:
        from batchscore.physical.session import get_spark

        spark = get_spark("local[2]")
    build = build_walmart if args.dataset == "walmart" else build_flights
    kwargs: dict[str, Any] = {"conf_path": args.conf, "shared": args.shared, "spark": spark}
    if args.train_rows is not None:
        kwargs["train_rows"] = args.train_rows
    info = build(args.root, seed=args.seed, **kwargs)
    print(
        f"{info.dataset}: {info.n_rows:,} rows x {info.n_features:,} features, models "
        f"{', '.join(info.model_paths)} (trained on {info.train_rows:,} rows, vectors by "
        f"{info.vector_writer}); spec {info.conf_path} ({info.seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
