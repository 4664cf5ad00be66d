"""k GLMs over one 100-feature table: batched matrix scoring vs one pass per model.

For k = 1, 8, 32 models (half Ridge, half binary LogisticRegression) over the same table, in one
Spark session, each writing the wide layout to Delta:
  peer        one `predict_batch_udf` column per model over the features as one array column
  naive       batchscore with every optimizer rule off (each model multiplies on its own)
  optimized   batchscore with its rules (the k models share one X @ W per batch), scoring inside
              the Delta writer (the job's fused path)
  unfused     optimized, but scored in mapInArrow and written as a second pass (the old path;
              at k = 32 only, one run, and only with BENCH_UNFUSED=1: it adds ~40 s)
  bound       the same scan and Delta write (same columns and types) with constant scores
One untimed bound and job run first, so no variant pays for Spark's first jobs.
The acceptance asks for k = 32 within 1.3x of k = 1 (optimized) and >= 15x faster than 32 peer
passes on 10M rows; this 2-core machine runs ROWS (300k; 50k with --quick) and the peer at
k = 32 only, on a sixteenth of the rows (PEER_SAMPLE), its time unscaled (not at all with
--quick), to keep `make bench` under 15 minutes: 32 UDF passes cost mostly fixed time, so
its ratios stay lower bounds. The 10M-row
comparison of k = 32 with k = 1 is bench/glms_10m.py (`make bench-10m`).
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    REPEAT_BUDGET_S,
    Context,
    Row,
    peak_rss_mb,
    timed_runs,
)

RUNS_PEERS = True  # bench/run.py: the next scenario gets a fresh Spark session
FEATURES = 100
ROWS = 300_000
QUICK_ROWS = 50_000
KS = (1, 8, 32)


def _table(root: Path, rows: int) -> Path:
    import pyarrow as pa
    from deltalake import write_deltalake

    path = root / f"glm_fact_{rows}"
    if (path / "_delta_log").exists():
        return path
    rng = np.random.default_rng(0)
    chunk = 250_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        data = {"id": np.arange(start, start + n, dtype=np.int64), "ds": ["2026-11-21"] * n}
        X = rng.normal(size=(n, FEATURES))
        data.update({f"f{i}": X[:, i] for i in range(FEATURES)})
        write_deltalake(str(path), pa.table(data), mode="append", partition_by=["ds"])
    return path


def _models(root: Path, k: int) -> list[tuple[str, Path, str]]:
    import joblib
    from sklearn.linear_model import LogisticRegression, Ridge

    from batchscore.datasets._write import sha256_file

    rng = np.random.default_rng(k)
    X = rng.normal(size=(5_000, FEATURES))
    out = []
    for i in range(k):
        w = rng.normal(size=FEATURES)
        model = Ridge().fit(X, X @ w) if i % 2 == 0 else LogisticRegression().fit(X, X @ w > 0)
        path = root / f"glm_{k}_{i}.joblib"
        joblib.dump(model, path)
        out.append((f"m{i}", path, sha256_file(path)))
    return out


def _spec(root: Path, table: Path, k: int) -> Path:
    features = ", ".join(f"f{i}" for i in range(FEATURES))
    lines = [
        f"name: glms_{k}",
        "tables:",
        f"  fact: {{path: {table}, format: delta, partition_by: [ds]}}",
        "source: {table: fact, id_columns: [id, ds]}",
        "models:",
    ]
    for name, path, digest in _models(root, k):
        lines += [f"  - name: {name}", f"    path: {path}", f"    sha256: {digest}",
                  f"    features: [{features}]"]  # fmt: skip
    lines.append(
        f"output: {{path: {root / f'glm_out_{k}'}, layout: wide, partition_by: [ds], "
        "mode: overwrite_partitions}"
    )
    spec = root / f"glms_{k}.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def _peer(spark: Any, plan: Any, out: Path) -> int:
    """Rows written by the peer over the rows whose id is a multiple of PEER_SAMPLE."""
    import joblib
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from batchscore.physical.lower import lower_source
    from batchscore.sinks.spark_io import write_delta

    features = plan.models[0].features
    joined = lower_source(spark, plan, check_keys=False)
    sample = F.col(plan.id_columns[0].ref) % PEER_SAMPLE == 0
    df = joined.where(sample).select(
        *(F.col(c.ref).alias(c.output_name) for c in plan.id_columns),
        F.array(*(F.col(f.ref) for f in features)).alias("x"),
    )
    for spec_model in plan.spec.models:

        def make_predict_fn(path: str = spec_model.path) -> Any:
            model = joblib.load(path)
            if hasattr(model, "predict_proba"):
                return lambda x: model.predict_proba(x)[:, 1]
            return lambda x: model.predict(x)

        udf = predict_batch_udf(make_predict_fn, return_type=T.DoubleType(), batch_size=10_000,
                                input_tensor_shapes=[[len(features)]])  # fmt: skip
        df = df.withColumn(f"{spec_model.name}__prediction", udf("x"))
    shutil.rmtree(out, ignore_errors=True)
    return write_delta(df.drop("x"), str(out), mode="overwrite", partition_by=["ds"]).rows


def _bound(spark: Any, plan: Any, out: Path, *, native: bool = False) -> int:
    """The scan and the Delta write of the scored variants with the matmul taken out: the same
    columns and types (array<double> probabilities included), filled with constants. The first
    prediction hashes every feature so the scan still reads them all. `native`: Spark's own
    Parquet writer instead of the Delta sink (the scan is Spark's Parquet reader either way,
    physical.native_scan)."""
    from pyspark.sql import functions as F

    from batchscore.physical.lower import lower_source, output_schema
    from batchscore.sinks.spark_io import write_delta

    joined = lower_source(spark, plan, check_keys=False)
    ids = {c.output_name: c.ref for c in plan.id_columns}
    touch: Any = F.xxhash64(*(F.col(f.ref) for f in plan.models[0].features)) % 1
    columns = []
    for field in output_schema(joined.schema, plan).fields:
        name = field.name
        if name in ids:
            value = F.col(ids[name])
        elif name.endswith("__probability"):
            value = F.array(F.lit(0.25), F.lit(0.75))
        elif name.endswith("__label") or name == "run_id":
            value = F.lit("1")
        elif name == "scored_at":
            value = F.lit(datetime(2026, 11, 21, tzinfo=UTC))
        else:  # a prediction: the first one carries the hash of the features
            value = F.lit(0.5) if touch is None else F.lit(0.5) + touch
            touch = None
        columns.append(value.cast(field.dataType).alias(name))
    shutil.rmtree(out, ignore_errors=True)
    if native:
        joined.select(*columns).write.mode("overwrite").partitionBy("ds").parquet(str(out))
        return 0
    return write_delta(
        joined.select(*columns), str(out), mode="overwrite", partition_by=["ds"]
    ).rows


def _unfused(spark: Any, spec: Any) -> int:
    """The job's write as it was before the fused writer: score in a mapInArrow pass, send the
    scored DataFrame back through the JVM to a second Python pass that writes it."""
    from batchscore.jobs.run import lineage, plan_job
    from batchscore.physical.lower import lower
    from batchscore.sinks.spark_io import write_delta

    plan = plan_job(spec)
    scored_at = datetime.now(UTC).replace(microsecond=0)
    run_id = f"{scored_at:%Y%m%dT%H%M%SZ}-unfused"
    predictions = lower(spark, plan, run_id=run_id, scored_at=scored_at)
    meta = lineage(plan, run_id=run_id, scored_at=scored_at)
    out = plan.output
    return write_delta(
        predictions, out.path, mode=out.mode, partition_by=out.partition_by, metadata=meta
    ).rows


PEER_SAMPLE = 16
"""The peer scores the rows whose id is a multiple of this (one in sixteen)."""
PEER = "peer: predict_batch_udf per model"
BOUND = "bound (scan+write, constant score)"
NATIVE_BOUND = "native bound (Spark Parquet read+write)"
OPTIMIZED = "batchscore optimized (batched)"
UNFUSED = "batchscore optimized, unfused (mapInArrow, then write)"


def run(ctx: Context) -> list[Row]:
    rows = QUICK_ROWS if ctx.quick else ROWS
    root = ctx.workdir / "glms"
    root.mkdir(parents=True, exist_ok=True)
    table = _table(root, rows)
    _warm_up(ctx, root, table)
    out: list[Row] = []
    baseline: list[float] = []
    for k in KS:
        out += _scenario(ctx, root, table, k, rows, baseline)
    return out


def source_plan(spec: Any) -> Any:
    """The plan the peer and the bound read: the job's scan and columns, no scoring rules."""
    from batchscore.jobs.run import plan_job
    from batchscore.plan.rules import prune_columns, prune_partitions

    return plan_job(spec, rules=(prune_partitions, prune_columns))


def _warm_up(ctx: Context, root: Path, table: Path) -> None:
    """One untimed bound and one scoring job, so the first timed variant does not pay for
    Spark's first jobs (JIT, Python workers, imports on the workers)."""
    from batchscore.jobs.run import run_job
    from batchscore.spec import load_spec

    spec = load_spec(_spec(root, table, KS[0]))
    _bound(ctx.spark, source_plan(spec), root / "bound")
    run_job(spec, spark=ctx.spark, force=True)


def _scenario(
    ctx: Context, root: Path, table: Path, k: int, rows: int, baseline: list[float]
) -> list[Row]:
    from batchscore.jobs.run import run_job
    from batchscore.spec import load_spec

    spec = load_spec(_spec(root, table, k))
    plan = source_plan(spec)
    variants: dict[str, Any] = {
        NATIVE_BOUND: lambda: _bound(ctx.spark, plan, root / "native", native=True),
        BOUND: lambda: _bound(ctx.spark, plan, root / "bound"),
        "batchscore naive (no rules)": lambda: run_job(spec, spark=ctx.spark, rules=(), force=True),
        OPTIMIZED: lambda: run_job(spec, spark=ctx.spark, force=True),
        UNFUSED: lambda: _unfused(ctx.spark, spec),
    }
    if k == KS[-1] and not ctx.quick:
        variants[PEER] = lambda: _peer(ctx.spark, plan, root / "peer")
    if k != KS[-1] or ctx.quick or os.environ.get("BENCH_UNFUSED") != "1":
        del variants[UNFUSED]  # the old path, shown where the gap is largest (one run)
    times, runs = {}, {}
    peer_rows = rows
    for name, fn in variants.items():
        repeats = 1 if name in (PEER, UNFUSED) else ctx.repeats
        times[name], result, runs[name] = timed_runs(fn, repeats, budget_s=REPEAT_BUDGET_S)
        print(f"   k={k} {name}: {times[name]:.2f} s ({runs[name]} run(s))", flush=True)
        if name == PEER:
            peer_rows = int(result)
    if not baseline:
        baseline.append(times[OPTIMIZED])
    ran = dict(times)  # the peer's time on its sample, unscaled: ratios are lower bounds
    peer, bound, native = times.get(PEER), times[BOUND], times[NATIVE_BOUND]
    rows_out = []
    for name, seconds in times.items():
        extra = f"{seconds / native:.2f}x the native bound; {seconds / bound:.2f}x the bound; "
        extra += f"{seconds / baseline[0]:.2f}x optimized k=1; "
        extra += f"{runs[name]} run(s)"
        if name == PEER:
            extra = (
                f"SAMPLE: {peer_rows:,} of {rows:,} rows (id % {PEER_SAMPLE} = 0); ratios against "
                "it compare this time with batchscore's on all rows (lower bounds); " + extra
            )
            rows_out.append(Row(f"{k} GLMs x {FEATURES} features", name, peer_rows, ran[PEER],
                                "peer", ran[PEER], extra, peak_rss_mb()))  # fmt: skip
            continue
        if name == OPTIMIZED and k == KS[-1]:
            extra += f"; k={k}/k={KS[0]} = {seconds / baseline[0]:.2f} (target <= 1.3)"
            if peer is not None:
                extra += f"; peer/optimized = {peer / seconds:.1f}"
                ctx.notes.append(
                    f"glms: optimized k={k} / k={KS[0]} = {seconds / baseline[0]:.2f} (target "
                    f"<= 1.3); peer / optimized at k={k} = {peer / seconds:.1f}."
                )
        rows_out.append(Row(f"{k} GLMs x {FEATURES} features", name, rows, seconds,
                            "peer" if peer else "", peer, extra, peak_rss_mb()))  # fmt: skip
    return rows_out
