"""Walmart and Flights (Morpheus) end to end through Spark: factorized vs materialized vs the
peer vs the bound.

Variants, all in one Spark session on the same tables and the same Delta sink:
  peer        the materialized join, then `pyspark.ml.functions.predict_batch_udf` per model
              (features flattened into one array column, as that API requires)
  naive       batchscore with every optimizer rule off (materialize, then score)
  optimized   batchscore with its rules (factorized where the cost model says so)
  always      batchscore with `planner.factorize: always` (GLM and trees factorized whatever
              the cost model says: what factorizing costs where the planner would not)
  bound       the same scans, joins and Delta write, scoring replaced by a constant
Two jobs per dataset: the logistic regression alone (where factorization applies to the whole
model), and both models (logistic regression + LightGBM).
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import Any

from bench.harness import Context, Row, peak_rss_mb, timed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "morpheus"


def _only(spec_text: str, model: str) -> str:
    models = re.search(r"models:\n(.*?)\noutput:", spec_text, re.S)
    assert models is not None
    blocks = re.split(r"\n(?=- name:|  - name:)", models.group(1))
    keep = [b for b in blocks if model in b]
    return spec_text.replace(models.group(1), "\n".join(keep))


def _peer(spark: Any, plan: Any, out: Path) -> int:
    import joblib
    import lightgbm as lgb
    from pyspark.ml.functions import predict_batch_udf, vector_to_array
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from batchscore.physical.lower import lower_source
    from batchscore.sinks.delta_table import write_delta

    joined = lower_source(spark, plan, check_keys=False)
    parts = []
    for feature in plan.models[0].features:
        column = F.col(feature.ref)
        if feature.kind == "vector":
            parts.append(_vector_values(joined, feature.ref, vector_to_array))
        elif feature.kind == "array":
            parts.append(column)
        else:
            parts.append(F.array(column.cast("double")))
    width = sum(f.width for f in plan.models[0].features)
    df = joined.select(
        *(F.col(c.ref).alias(c.output_name) for c in plan.id_columns), F.concat(*parts).alias("x")
    )
    for binding in plan.models:
        path = _artifact(plan, binding.name)

        def make_predict_fn(path: str = path) -> Any:
            model = lgb.Booster(model_file=path) if path.endswith(".txt") else joblib.load(path)

            def predict(x: Any) -> Any:
                if not path.endswith(".txt"):
                    return model.predict_proba(x)
                import numpy as np

                p = model.predict(x)  # a binary Booster gives P(class 1) only
                return np.c_[1.0 - p, p] if p.ndim == 1 else p

            return predict

        udf = predict_batch_udf(
            make_predict_fn, return_type=T.ArrayType(T.DoubleType()), batch_size=4096,
            input_tensor_shapes=[[width]],
        )  # fmt: skip
        df = df.withColumn(f"{binding.name}__probability", udf("x"))
    # predict_batch_udf needs dense tensors: Flights' 13,669 inputs are 110 KB a row, so Arrow
    # batches of Spark's default 10,000 rows would hold 1 GB each; 1,000 rows keep it bounded.
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "1000")
    try:
        result = write_delta(df.drop("x"), str(out), mode="overwrite", partition_by=["ds"])
    finally:
        spark.conf.set(key, before)
    return result.rows


def _vector_values(df: Any, name: str, vector_to_array: Any) -> Any:
    """A Spark ML vector column as array<double>: VectorUDT through Spark ML's own function,
    the struct layout (type, size, indices, values) that Delta tables hold through SQL."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F

    if isinstance(df.schema[name].dataType, VectorUDT):
        return vector_to_array(F.col(name))
    c = f"`{name}`"
    pos = f"array_position({c}.indices, i)"
    sparse = (
        f"transform(sequence(0, {c}.size - 1), i -> "
        f"IF({pos} > 0, element_at({c}.values, CAST({pos} AS INT)), 0.0D))"
    )
    return F.expr(f"IF({c}.type = 0, {sparse}, {c}.values)")


def _artifact(plan: Any, name: str) -> str:
    return next(m.path for m in plan.spec.models if m.name == name)


def _bound(spark: Any, plan: Any, out: Path) -> int:
    from pyspark.sql import functions as F

    from batchscore.physical.lower import lower_source
    from batchscore.sinks.delta_table import write_delta

    joined = lower_source(spark, plan, check_keys=False)
    inputs = [c.ref for c in plan.id_columns] + [f.ref for f in plan.features()]
    df = joined.select(*dict.fromkeys(inputs))
    consumed = df.select(
        *(F.col(c.ref).alias(c.output_name) for c in plan.id_columns),
        F.lit(0.5).alias("prediction"),
        *(F.hash(F.col(f.ref)).alias(f"h{i}") for i, f in enumerate(plan.features())),
    )
    return write_delta(consumed, str(out), mode="overwrite", partition_by=["ds"]).rows


DATASETS = {
    # name: (builder, fact rows, logistic regression model name)
    "walmart": ("build_walmart", 421_570, "walmart_logreg"),
    "flights": ("build_flights", 66_548, "flights_logreg"),
}
PEER = "peer: join + predict_batch_udf"
ALWAYS = "batchscore factorize: always"
BOUND = "bound (scan+join+write, constant score)"


def run(ctx: Context) -> list[Row]:
    from batchscore.datasets import morpheus

    rows: list[Row] = []
    for name, (builder, n_rows, logreg) in DATASETS.items():
        root = ctx.workdir / name
        conf = root / "conf" / f"{name}.yaml"
        if not conf.exists():
            getattr(morpheus, builder)(root, conf_path=conf, shared=SHARED, spark=ctx.spark)
        text = conf.read_text()
        glm = _only(text, logreg).replace(f"{name}_predictions", f"{name}_glm_predictions")
        (root / "conf" / "glm.yaml").write_text(glm)
        jobs = ((f"{name}, logistic regression", "glm.yaml"),
                (f"{name}, logreg + LightGBM", f"{name}.yaml"))  # fmt: skip
        for job, spec_name in jobs:
            rows += _job(ctx, job, root / "conf" / spec_name, root / "bench_out", n_rows)
    return rows


def _job(ctx: Context, job: str, spec_path: Path, out: Path, fact_rows: int) -> list[Row]:
    from batchscore.jobs.run import plan_job, run_job
    from batchscore.plan.rules import eliminate_unused_joins, prune_columns, prune_partitions
    from batchscore.spec import load_spec

    spec = load_spec(spec_path)
    plan = plan_job(spec, rules=(eliminate_unused_joins, prune_partitions, prune_columns))
    n_rows = fact_rows * len(spec.models)
    always = spec.model_copy(
        update={"planner": spec.planner.model_copy(update={"factorize": "always"})}
    )
    variants: dict[str, Any] = {
        BOUND: lambda: _bound(ctx.spark, plan, out),
        "batchscore naive (no rules)": lambda: run_job(spec, spark=ctx.spark, rules=(), force=True),
        "batchscore optimized": lambda: run_job(spec, spark=ctx.spark, force=True),
        ALWAYS: lambda: run_job(always, spark=ctx.spark, force=True),
    }
    if not ctx.quick:
        variants[PEER] = lambda: _peer(ctx.spark, plan, out)
    times, same = {}, {}
    reference = None
    for name, fn in variants.items():
        repeats = 1 if name in (PEER, ALWAYS) else ctx.repeats  # the slow ones run once
        print(f"   {job}: {name} ...", flush=True)
        times[name], _ = timed(lambda fn=fn: _fresh(out, fn), repeats)
        print(f"   {job}: {name}: {times[name]:.2f} s", flush=True)
        if name.startswith("batchscore"):
            got = _snapshot(spec.output.path)
            reference = reference or got
            same[name] = _equal(reference, got)
    peer, bound = times.get(PEER), times[BOUND]
    return [
        Row(
            job,
            name,
            n_rows,
            sec,
            "peer" if peer else "",
            peer,
            f"{sec / bound:.2f}x the bound"
            + (f"; output == naive's (rtol 1e-9): {same[name]}" if name in same else ""),
            peak_rss_mb(),
        )
        for name, sec in times.items()
    ]


def _snapshot(path: str) -> tuple[list[Any], list[Any], Any]:
    """The table's rows in a fixed order: (model, id) keys, labels, probabilities."""
    import numpy as np
    import pyarrow as pa
    from deltalake import DeltaTable

    table = pa.table(DeltaTable(path).to_pyarrow_table())
    ids = [c for c in table.column_names if c.endswith("_id")][:1]
    table = table.sort_by([("model", "ascending"), *((c, "ascending") for c in ids)])
    proba = np.asarray([p for p in table["probability"].to_pylist()], dtype=np.float64)
    keys = list(zip(table["model"].to_pylist(), table[ids[0]].to_pylist(), strict=True))
    return keys, table["label"].to_pylist(), proba


def _equal(a: Any, b: Any) -> bool:
    import numpy as np

    return bool(a[0] == b[0] and a[1] == b[1] and np.allclose(a[2], b[2], rtol=1e-9, atol=1e-12))


def _fresh(out: Path, fn: Any) -> Any:
    shutil.rmtree(out, ignore_errors=True)
    return fn()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from bench.run import run_modules

    run_modules(["bench.morpheus"], quick=args.quick)


if __name__ == "__main__":
    main()
