"""100M rows: a star schema scored with a GLM and a tree model (`make bench-100m`, not in CI).

fact (Delta, partitioned by ds, DATES dates of equal size): id, ds, cust_id, prod_id and seven
features (x0..x3 float64, x4..x5 float32, qty int32); customers (Delta, 100k rows, 12 float64
features, key cust_id); products (Parquet, 5k rows, 10 float32 features, key prod_id). Two
models read all 29 features through both joins: a LogisticRegression and a 100-tree LightGBM
classifier, trained on a sample drawn by the same generator. The output is the wide layout,
partitioned by ds.

Legs, each on a fresh output table, each a full `run_job` (planning and commit included):
one date (1/DATES of the rows: the "10M" leg at 100M), all dates (the "100M" leg), one date
again; the one-date time is the mean of its two runs, so a slow stretch of the machine lands on
both sizes. An untimed job on 100k rows comes first (Spark's first jobs, compiling the trees).
During each leg a thread samples the RSS of this process (the driver's Python), the JVM (driver
and executor: one JVM under local[N]) and the Python workers. After each leg the output is
checked: row count from the Delta log and the run, every id of the selection exactly once
(one streaming pass over the ids with a bitmap), no null predictions, and for SAMPLE ids the
probabilities, predictions and labels against the models' own predict_proba/predict on
features rebuilt with pyarrow from the source tables (rtol 1e-9); a failed check raises.

The fact table is generated in chunks of CHUNK_ROWS (one Delta append each) into a staging
folder renamed when complete, and reused by later runs; at 100M rows it is ~5.1 GB, the
all-dates output ~5.5 GB (removed after its checks unless BENCH_100M_KEEP=1).

    make bench-100m                          # 100M rows -> bench/RESULTS-100M.md
    make bench-100m BENCH_100M_ROWS=2000000  # a trial -> bench/out/RESULTS-100M.2000000.md

BENCH_100M_ROWS sets the fact rows (default 100M; --quick: 2M); BENCH_100M_DIR the folder
for the tables (default bench/out/scale_100m).
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import Context, Row, peak_rss_mb, scaled, standalone

ROWS, QUICK_ROWS = 100_000_000, 2_000_000
DATES = 10
START = date(2026, 11, 1)
CHUNK_ROWS = 2_500_000
CUSTOMERS, PRODUCTS = 100_000, 5_000
CUSTOMER_FEATURES, PRODUCT_FEATURES = 12, 10
FACT_FEATURES = ("x0", "x1", "x2", "x3", "x4", "x5", "qty")
TRAIN_ROWS = 50_000
TREES = 100
SAMPLE = 10_000
WARM_ROWS = 100_000
RTOL, ATOL = 1e-9, 1e-15
SEED = 100
MODELS = ("glm", "lgbm")
SCENARIO = f"star 100M: LogisticRegression + LightGBM ({TREES} trees), 29 features, 2 joins"
FEATURES = [
    *FACT_FEATURES,
    *(f"customers.c{i}" for i in range(CUSTOMER_FEATURES)),
    *(f"products.p{i}" for i in range(PRODUCT_FEATURES)),
]


def _dates() -> list[str]:
    return [(START + timedelta(days=d)).isoformat() for d in range(DATES)]


# ---------------------------------------------------------------- data and models


def _fact_chunk(chunk: int, first_id: int, n: int, ds: str) -> Any:
    """Rows first_id .. first_id + n - 1 of the fact table, drawn from the chunk's own seed."""
    import pyarrow as pa

    rng = np.random.default_rng([SEED, chunk])
    x = rng.standard_normal((n, 4))
    x32 = rng.standard_normal((n, 2), dtype=np.float32)
    return pa.table(
        {
            "id": np.arange(first_id, first_id + n, dtype=np.int64),
            "ds": pa.repeat(pa.scalar(ds), n),
            "cust_id": rng.integers(0, CUSTOMERS, n, dtype=np.int64),
            "prod_id": rng.integers(0, PRODUCTS, n, dtype=np.int64),
            **{f"x{i}": x[:, i] for i in range(4)},
            "x4": x32[:, 0],
            "x5": x32[:, 1],
            "qty": rng.integers(1, 21, n, dtype=np.int32),
        }
    )


def _write_fact(path: Path, rows: int) -> None:
    """The fact table in appends of at most CHUNK_ROWS, into a staging folder renamed at the
    end: an interrupted build is started again, never reused half-written."""
    from deltalake import write_deltalake

    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    per_date, chunk = rows // DATES, 0
    for d, ds in enumerate(_dates()):
        for start in range(0, per_date, CHUNK_ROWS):
            n = min(CHUNK_ROWS, per_date - start)
            table = _fact_chunk(chunk, d * per_date + start, n, ds)
            write_deltalake(str(staging), table, mode="append", partition_by=["ds"])
            chunk += 1
        print(f"   scale_100m: fact {ds}: {per_date:,} rows", flush=True)
    staging.rename(path)


def _write_dimensions(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    rng = np.random.default_rng([SEED, 10**6])
    c = rng.standard_normal((CUSTOMERS, CUSTOMER_FEATURES))
    customers: dict[str, np.ndarray] = {"cust_id": np.arange(CUSTOMERS, dtype=np.int64)}
    customers.update({f"c{i}": c[:, i] for i in range(CUSTOMER_FEATURES)})
    write_deltalake(str(root / "customers"), pa.table(customers), mode="overwrite")
    p = rng.standard_normal((PRODUCTS, PRODUCT_FEATURES), dtype=np.float32)
    products: dict[str, np.ndarray] = {"prod_id": np.arange(PRODUCTS, dtype=np.int64)}
    products.update({f"p{i}": p[:, i] for i in range(PRODUCT_FEATURES)})
    (root / "products").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(products), root / "products" / "part-0.parquet")


@dataclass
class Dimensions:
    """Both dimensions as float64 matrices, rows in key order: what the join gives a fact row."""

    customer_keys: np.ndarray
    customers: np.ndarray
    product_keys: np.ndarray
    products: np.ndarray

    @classmethod
    def load(cls, root: Path) -> Dimensions:
        import pyarrow.parquet as pq
        from deltalake import DeltaTable

        c = DeltaTable(str(root / "customers")).to_pyarrow_table().sort_by("cust_id")
        p = pq.read_table(root / "products").sort_by("prod_id")
        c_cols = [f"c{i}" for i in range(CUSTOMER_FEATURES)]
        p_cols = [f"p{i}" for i in range(PRODUCT_FEATURES)]
        return cls(
            c["cust_id"].to_numpy(),
            np.column_stack([c[k].to_numpy().astype(np.float64) for k in c_cols]),
            p["prod_id"].to_numpy(),
            np.column_stack([p[k].to_numpy().astype(np.float64) for k in p_cols]),
        )

    def features(self, fact: Any) -> np.ndarray:
        """The models' input matrix for fact rows (a pyarrow table), in the spec's order."""
        own = [fact[k].to_numpy().astype(np.float64) for k in FACT_FEATURES]
        c = _lookup(self.customer_keys, fact["cust_id"].to_numpy(), "cust_id")
        p = _lookup(self.product_keys, fact["prod_id"].to_numpy(), "prod_id")
        return np.column_stack([*own, self.customers[c], self.products[p]])


def _lookup(keys: np.ndarray, wanted: np.ndarray, name: str) -> np.ndarray:
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    if not np.array_equal(keys[at], wanted):
        raise AssertionError(f"scale_100m: a fact {name} has no dimension row")
    return at


def _train(root: Path, dims: Dimensions) -> None:
    """Both models, on TRAIN_ROWS rows drawn by the fact table's generator (its own seed)."""
    import joblib
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression

    X = dims.features(_fact_chunk(10**6, 0, TRAIN_ROWS, _dates()[0]))
    rng = np.random.default_rng([SEED, 10**6 + 1])
    logit = X @ (rng.normal(size=X.shape[1]) / np.sqrt(X.shape[1]))
    logit += np.sin(2 * X[:, 0]) * X[:, 7] + 0.1 * (X[:, 6] - 10.5)
    y = (logit + rng.logistic(size=len(logit)) > 0).astype(np.int64)
    glm = LogisticRegression(max_iter=1_000).fit(X, y)
    lgbm = lgb.LGBMClassifier(
        n_estimators=TREES, num_leaves=31, learning_rate=0.1, verbose=-1, n_jobs=2
    ).fit(X, y)
    joblib.dump(glm, root / "glm.joblib")
    joblib.dump(lgbm, root / "lgbm.joblib")


def _spec(root: Path, name: str, where: str | None, out: str) -> Path:
    """One spec shape for every leg: only the selection and the output folder differ."""
    from batchscore.datasets._write import sha256_file

    features = ", ".join(FEATURES)
    lines = [
        f"name: {name}",
        "tables:",
        "  fact: {path: fact, format: delta, partition_by: [ds]}",
        "  customers: {path: customers, format: delta, key: cust_id}",
        "  products: {path: products, format: parquet, key: prod_id}",
        "source:",
        "  table: fact",
        *([f'  where: "{where}"'] if where else []),
        "  joins:",
        "    - {table: customers, on: {cust_id: cust_id}}",
        "    - {table: products, on: {prod_id: prod_id}}",
        "  id_columns: [id, ds]",
        "models:",
    ]
    for model in MODELS:
        lines += [f"  - name: {model}", f"    path: {model}.joblib",
                  f"    sha256: {sha256_file(root / f'{model}.joblib')}",
                  f"    features: [{features}]", "    output: predict_proba"]  # fmt: skip
    lines.append(
        f"output: {{path: {out}, layout: wide, partition_by: [ds], mode: overwrite_partitions}}"
    )
    path = root / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _build(root: Path, rows: int) -> float:
    """Tables and models under root (kept for the next run); seconds spent, 0 when reused."""
    if (root / "fact" / "_delta_log").exists() and (root / "lgbm.joblib").exists():
        return 0.0
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    print(f"   scale_100m: generating {rows:,} fact rows under {root} ...", flush=True)
    _write_dimensions(root)
    _train(root, Dimensions.load(root))
    shutil.rmtree(root / "fact", ignore_errors=True)
    _write_fact(root / "fact", rows)
    return time.perf_counter() - started


# ---------------------------------------------------------------- memory


class RoleMemory:
    """Peak RSS per role while a leg runs, sampled every `interval` seconds: this process (the
    driver's Python), Java children (the JVM: driver and executor under local[N]), Python
    children (the PySpark daemon and its workers; their sum and the largest one). Pages that
    forked workers share count once per worker: the sums are upper bounds."""

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self._me = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak: dict[str, int] = {"driver": 0, "jvm": 0, "workers": 0, "worker": 0, "all": 0}
        self._thread = threading.Thread(target=self._loop, name="scale-memory", daemon=True)

    def __enter__(self) -> RoleMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        import psutil

        now = {"driver": self._me.memory_info().rss, "jvm": 0, "workers": 0, "worker": 0}
        other = 0
        for proc in self._me.children(recursive=True):
            try:
                rss, name = proc.memory_info().rss, proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # exited between the listing and the read
            if "java" in name:
                now["jvm"] += rss
            elif "python" in name:
                now["workers"] += rss
                now["worker"] = max(now["worker"], rss)
            else:
                other += rss  # a compiler building tree kernels, ...
        now["all"] = now["driver"] + now["jvm"] + now["workers"] + other
        for key, value in now.items():
            self.peak[key] = max(self.peak[key], value)

    def mb(self, key: str) -> float:
        return self.peak[key] / 2**20

    def line(self) -> str:
        return (
            f"peak RSS MB: driver {self.mb('driver'):,.0f}, JVM {self.mb('jvm'):,.0f}, "
            f"Python workers {self.mb('workers'):,.0f} (largest {self.mb('worker'):,.0f}), "
            f"all {self.mb('all'):,.0f}"
        )


# ---------------------------------------------------------------- checks


@dataclass
class Checked:
    rows: int
    files: int
    bytes: int
    parity: dict[str, float] = field(default_factory=dict)  # model -> max relative difference
    seconds: float = 0.0

    def line(self) -> str:
        diffs = ", ".join(f"{m} {d:.1e}" for m, d in self.parity.items())
        return (
            f"count {self.rows:,} (Delta log, run, distinct ids: equal), 0 null predictions; "
            f"{SAMPLE:,} sampled ids equal to predict_proba/predict (max rel diff {diffs}, "
            f"rtol {RTOL:g}), labels identical"
        )


def _check(root: Path, out: Path, result: Any, ids: range, dims: Dimensions) -> Checked:
    """Count, exactly-once and sampled exactness of one leg's output (raises on a failure)."""
    import pyarrow as pa
    from deltalake import DeltaTable

    started = time.perf_counter()
    table = DeltaTable(str(out))
    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    logged = int(sum(actions["num_records"]))
    if not logged == result.rows == len(ids):
        raise AssertionError(
            f"scale_100m: {out} has {logged:,} rows in its log, the run says {result.rows:,}, "
            f"the selection has {len(ids):,}"
        )
    rng = np.random.default_rng([SEED, len(ids)])
    sample = np.sort(rng.choice(len(ids), size=min(SAMPLE, len(ids)), replace=False)) + ids.start
    got = _scan_output(table, ids, sample)
    fact = _fact_rows(root, sample)
    X = dims.features(fact)
    checked = Checked(logged, len(actions["num_records"]), int(sum(actions["size_bytes"])))
    for name in MODELS:
        checked.parity[name] = _compare(name, _load_model(root, name), X, got)
    checked.seconds = time.perf_counter() - started
    return checked


def _scan_output(table: Any, ids: range, sample: np.ndarray) -> Any:
    """One streaming pass over the output: every id of `ids` exactly once, no null predictions;
    returns the rows of `sample`, by id. Memory: a bitmap of the ids and the sampled rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = ["id"]
    for m in MODELS:
        columns += [f"{m}__prediction", f"{m}__label", f"{m}__probability"]
    seen = np.zeros(len(ids), dtype=bool)
    wanted = pa.array(sample)
    kept, duplicates, outside, nulls = [], 0, 0, 0
    for batch in table.to_pyarrow_dataset().to_batches(columns=columns):
        got = batch.column("id").to_numpy() - ids.start
        inside = (got >= 0) & (got < len(ids))
        outside += int((~inside).sum())
        unique = np.unique(got[inside])
        duplicates += int(inside.sum()) - len(unique) + int(seen[unique].sum())
        seen[unique] = True
        nulls += sum(batch.column(f"{m}__prediction").null_count for m in MODELS)
        kept.append(batch.filter(pc.is_in(batch.column("id"), value_set=wanted)))
    missing = int((~seen).sum())
    if duplicates or outside or missing or nulls:
        raise AssertionError(
            f"scale_100m: output ids: {duplicates:,} duplicated, {outside:,} outside the "
            f"selection, {missing:,} missing; {nulls:,} null predictions"
        )
    return pa.Table.from_batches(kept, schema=kept[0].schema).sort_by("id")


def _fact_rows(root: Path, sample: np.ndarray) -> Any:
    """The sampled fact rows, read back from the fact table with pyarrow (by id)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    dataset = DeltaTable(str(root / "fact")).to_pyarrow_dataset()
    columns = ["id", "cust_id", "prod_id", *FACT_FEATURES]
    rows = dataset.to_table(columns=columns, filter=pc.field("id").isin(pa.array(sample)))
    return rows.sort_by("id")


def _load_model(root: Path, name: str) -> Any:
    import joblib

    return joblib.load(root / f"{name}.joblib")


def _compare(name: str, model: Any, X: np.ndarray, got: Any) -> float:
    """The output's probabilities, predictions and labels against the model's own; returns the
    largest relative difference of the probabilities."""
    want = model.predict_proba(X)
    proba = got[f"{name}__probability"].combine_chunks().flatten().to_numpy()
    proba = np.asarray(proba, dtype=np.float64).reshape(want.shape)
    prediction = got[f"{name}__prediction"].to_numpy()
    labels = np.asarray(got[f"{name}__label"].to_pylist())
    same_labels = np.array_equal(labels, np.asarray(model.predict(X)).astype(str))
    close = np.allclose(proba, want, rtol=RTOL, atol=ATOL) and np.allclose(
        prediction, want[:, 1], rtol=RTOL, atol=ATOL
    )
    diff = float(np.max(np.abs(proba - want) / np.maximum(np.abs(want), 1e-300)))
    if not (close and same_labels):
        raise AssertionError(
            f"scale_100m: model {name} differs from its own predict_proba on the sampled ids "
            f"(max relative difference {diff:.3g}, labels identical: {same_labels})"
        )
    return diff


# ---------------------------------------------------------------- the legs


@dataclass
class Leg:
    label: str
    rows: int
    seconds: float
    memory: RoleMemory
    checked: Checked


def _leg(ctx: Context, root: Path, spec_path: Path, ids: range, dims: Dimensions) -> Leg:
    import pyarrow as pa

    from batchscore.jobs.run import run_job
    from batchscore.spec import load_spec

    spec = load_spec(spec_path)
    out = Path(spec.output.path)
    shutil.rmtree(out, ignore_errors=True)
    gc.collect()  # the last leg's checks' arrays, before this leg's driver peak is sampled
    pa.default_memory_pool().release_unused()
    with RoleMemory() as memory:
        started = time.perf_counter()
        result = run_job(spec, spark=ctx.spark, force=True)
        seconds = time.perf_counter() - started
    print(f"   scale_100m: {spec.name}: {result.rows:,} rows in {seconds:.1f} s", flush=True)
    print(f"   scale_100m: {memory.line()}", flush=True)
    checked = _check(root, out, result, ids, dims)
    print(f"   scale_100m: {checked.line()} (checked in {checked.seconds:.0f} s)", flush=True)
    if os.environ.get("BENCH_100M_KEEP") != "1":
        shutil.rmtree(out, ignore_errors=True)
    return Leg(spec.name, result.rows, seconds, memory, checked)


def _rows() -> int:
    return int(os.environ.get("BENCH_100M_ROWS", ROWS))


def _shown(path: Path) -> str:
    """The path relative to the working directory when under it (results files are committed)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(ctx: Context) -> list[Row]:
    from batchscore.jobs.run import run_job
    from batchscore.spec import load_spec

    rows = QUICK_ROWS if ctx.quick and "BENCH_100M_ROWS" not in os.environ else _rows()
    per_date = rows // DATES
    if per_date < WARM_ROWS:
        raise ValueError(f"BENCH_100M_ROWS={rows}: at least {DATES * WARM_ROWS:,} rows")
    rows = per_date * DATES
    base = Path(os.environ.get("BENCH_100M_DIR", ctx.workdir / "scale_100m"))
    root = base / f"rows_{rows}"
    generated = _build(root, rows)
    dims = Dimensions.load(root)
    first = _dates()[0]
    warm = _spec(root, "scale_warm", f"ds = '{first}' AND id < {WARM_ROWS}", "out_warm")
    one = _spec(root, "scale_one_date", f"ds = '{first}'", "out_one_date")
    every = _spec(root, "scale_all_dates", None, "out_all_dates")
    print("   scale_100m: warm-up (untimed) ...", flush=True)
    shutil.rmtree(root / "out_warm", ignore_errors=True)
    run_job(load_spec(warm), spark=ctx.spark, force=True)
    shutil.rmtree(root / "out_warm", ignore_errors=True)
    legs = [
        _leg(ctx, root, one, range(per_date), dims),
        _leg(ctx, root, every, range(rows), dims),
        _leg(ctx, root, one, range(per_date), dims),
    ]
    return _report(ctx, root, rows, generated, legs)


def _report(ctx: Context, root: Path, rows: int, generated: float, legs: list[Leg]) -> list[Row]:
    small, big = [legs[0], legs[2]], legs[1]
    t_small = statistics.mean(leg.seconds for leg in small)
    n_small = small[0].rows
    cost = (big.seconds / big.rows) / (t_small / n_small)
    fact_gb = _du(root / "fact") / 1e9
    out_gb = big.checked.bytes / 1e9
    out: list[Row] = []
    if generated:
        note = f"fact {fact_gb:.2f} GB of Delta"
        build = "generate fact + dimensions, train models"
        out.append(Row(SCENARIO, build, rows, generated, extra=note, peak_rss_mb=peak_rss_mb()))
    runs = ", ".join(f"{leg.seconds:.2f}" for leg in small)
    note = (
        f"mean of runs {runs} s (before and after the all-dates run); first run "
        f"{legs[0].memory.line()}; second run {legs[2].memory.line()}; {small[0].checked.line()}"
    )
    small_peak = max(leg.memory.mb("all") for leg in small)
    out.append(Row(SCENARIO, f"one date of {DATES}", n_small, t_small, extra=note,
                   peak_rss_mb=small_peak))  # fmt: skip
    note = (
        f"per-row cost {cost:.2f}x the one-date run's (target <= 1.2); {big.memory.line()}; "
        f"{big.checked.line()}; output {out_gb:.2f} GB in {big.checked.files} files"
    )
    baseline = scaled(t_small, n_small, big.rows)
    out.append(Row(SCENARIO, f"all {DATES} dates", big.rows, big.seconds,
                   "one date, at its rate", baseline, note, big.memory.mb("all")))  # fmt: skip
    ratio = big.memory.mb("all") / legs[0].memory.mb("all")
    ctx.notes += [
        f"scale_100m: {big.rows:,} rows at {big.rows / big.seconds:,.0f} rows/s, one date "
        f"({n_small:,} rows) at {n_small / t_small:,.0f} rows/s: per-row cost at {big.rows:,} "
        f"= {cost:.2f}x that at {n_small:,} (target <= 1.2).",
        f"scale_100m: memory, all dates: {big.memory.line()}; one date (the run before): "
        f"{legs[0].memory.line()}; all processes {ratio:.2f}x the one-date peak for "
        f"{big.rows / n_small:.0f}x the rows (JVM heap limit spark.driver.memory = "
        f"{ctx.spark.conf.get('spark.driver.memory', 'the default')}).",
        "scale_100m: the peak RSS column of the one-date and all-dates rows is the leg's own "
        "(sampled every 0.25 s during its run_job; the one-date row: the larger of its runs).",
        f"scale_100m: checks passed on every leg: {big.checked.line()}.",
        f"scale_100m: disk: fact {fact_gb:.2f} GB, all-dates output {out_gb:.2f} GB; tables "
        f"under {_shown(root)}.",
    ]
    return out


def main() -> None:
    standalone(run, __doc__ or "", f"{QUICK_ROWS:,} rows (or BENCH_100M_ROWS)")


if __name__ == "__main__":
    main()
