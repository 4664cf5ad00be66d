"""A star-schema job with one big multiclass LightGBM: compiled trees vs LightGBM's predictor.

fact (Delta, 1M rows; 200k with --quick): id, ds, fk_a, fk_b; dim_a (Parquet, 20k rows): a
171-wide array<double> feature; dim_b (Parquet, 1k rows): a 27-wide one. One LGBMClassifier,
5 classes x 200 rounds = 1,000 trees (num_leaves 31), reads all 198 features. Variants in one
Spark session on the same tables: the native bound (Spark's Parquet reader, broadcast joins,
Spark's Parquet writer, constant scores), the bound (same with the Delta sink), the job with
`strategy: native` (LightGBM's own predictor) and the job as batchscore picks (compiled trees),
outputs compared (labels identical, probabilities rtol 1e-12). `strategy: native` scores the
rows whose id is a multiple of harness.SLOW_SAMPLE and is compared at its rate (it took 79 s of
the bench for all rows); the outputs are compared on those rows.

A second model, a 60-tree LightGBM regressor over the same 198 features, is the case where
moving the features into Python costs more than the trees: its job is reported against the
native bound (target <= 1.3x), as a daily run over unchanged dimensions (their keys were found
unique by the warm-up run and are not checked again, plan.checked_keys) and as the first run
over new dimension snapshots (this job's remembered checks removed before each run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    REPEAT_BUDGET_S,
    SLOW_SAMPLE,
    Context,
    Row,
    peak_rss_mb,
    scaled,
    timed_runs,
)
from bench.morpheus import NATIVE_BOUND, _bound, _fresh, _native_bound

ROWS, QUICK_ROWS = 1_000_000, 200_000
A_ROWS, B_ROWS = 20_000, 1_000
A_WIDTH, B_WIDTH = 171, 27
CLASSES, ROUNDS = 5, 200
TRAIN_ROWS = 10_000
BOUND = "bound (scan+join+Delta write, constant score)"
NATIVE = "batchscore, strategy: native (LightGBM's predictor)"
COMPILED = "batchscore (compiled trees)"
SMALL = "batchscore, 60-tree LightGBM regressor (compiled)"
SMALL_FIRST = "batchscore, 60-tree LightGBM regressor, dimension keys checked (first run)"
SMALL_ROUNDS = 60
TREE_SCENARIO = f"tree job ({CLASSES * ROUNDS} trees, 198 features)"


def _build(root: Path, n: int) -> Path:
    import joblib
    import lightgbm as lgb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    a = rng.normal(size=(A_ROWS, A_WIDTH))
    b = rng.normal(size=(B_ROWS, B_WIDTH))
    fk_a, fk_b = rng.integers(0, A_ROWS, n), rng.integers(0, B_ROWS, n)
    fact = pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "ds": np.full(n, "2026-11-21"),
            "fk_a": fk_a,
            "fk_b": fk_b,
        }
    )
    write_deltalake(str(root / "fact"), fact, partition_by=["ds"], mode="overwrite")
    for name, key, X in (("dim_a", "a_id", a), ("dim_b", "b_id", b)):
        (root / name).mkdir(exist_ok=True)
        table = pa.table({key: np.arange(X.shape[0], dtype=np.int64), "v": pa.array(list(X))})
        pq.write_table(table, root / name / "part-0.parquet")
    rows = rng.integers(0, n, TRAIN_ROWS)
    X = np.c_[a[fk_a[rows]], b[fk_b[rows]]]
    logits = X[:, :CLASSES] + 0.5 * X[:, A_WIDTH : A_WIDTH + CLASSES]
    y = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    model = lgb.LGBMClassifier(
        n_estimators=ROUNDS, num_leaves=31, learning_rate=0.05, verbose=-1, n_jobs=2
    ).fit(X, y)
    joblib.dump(model, root / "model.joblib")
    small = lgb.LGBMRegressor(
        n_estimators=SMALL_ROUNDS, num_leaves=31, learning_rate=0.1, verbose=-1, n_jobs=2
    ).fit(X, logits[:, 0])
    joblib.dump(small, root / "model_60.joblib")
    _write_spec(root, "job_60.yaml", "model_60.joblib", "predict", "", "out_60")
    for strategy in ("", "native"):
        name = f"job{'_' + strategy if strategy else ''}.yaml"
        _write_spec(root, name, "model.joblib", "predict_proba", strategy, "out")
    return root / "job.yaml"


def _write_spec(root: Path, name: str, model: str, output: str, strategy: str, out: str) -> None:
    from batchscore.datasets._write import sha256_file

    digest = sha256_file(root / model)
    lines = [
        "name: tree_job",
        "tables:",
        "  fact: {path: fact, format: delta, partition_by: [ds]}",
        "  dim_a: {path: dim_a, format: parquet, key: a_id}",
        "  dim_b: {path: dim_b, format: parquet, key: b_id}",
        "source:",
        "  table: fact",
        "  joins: [{table: dim_a, on: {fk_a: a_id}}, {table: dim_b, on: {fk_b: b_id}}]",
        "  id_columns: [id, ds]",
        "models:",
        "  - name: lgbm",
        f"    path: {model}",
        f"    sha256: {digest}",
        "    features: [dim_a.v, dim_b.v]",
        f"    output: {output}",
        *([f"    strategy: {strategy}"] if strategy else []),
        f"output: {{path: {out}, partition_by: [ds], mode: overwrite_partitions}}",
        "",
    ]
    (root / name).write_text("\n".join(lines))


def run(ctx: Context) -> list[Row]:
    from batchscore.jobs.run import plan_job, run_job
    from batchscore.plan.rules import eliminate_unused_joins, prune_columns, prune_partitions
    from batchscore.spec import load_spec

    n = QUICK_ROWS if ctx.quick else ROWS
    root = ctx.workdir / f"tree_job_{n}"
    spec_path = root / "job.yaml"
    if not (root / "job_60.yaml").exists():
        print("   tree_job: building tables and training the model ...", flush=True)
        _build(root, n)
    spec = load_spec(spec_path)
    sample = f"id % {SLOW_SAMPLE} = 0"
    native = load_spec(root / "job_native.yaml")
    native = native.model_copy(
        update={"source": native.source.model_copy(update={"where": sample})}
    )
    small = load_spec(root / "job_60.yaml")
    plan = plan_job(spec, rules=(eliminate_unused_joins, prune_partitions, prune_columns))
    out = root / "out"
    remembered = _check_entries(plan_job(small))
    variants: dict[str, Any] = {
        NATIVE_BOUND: lambda: _native_bound(ctx.spark, plan, out),
        BOUND: lambda: _bound(ctx.spark, plan, out),
        NATIVE: lambda: run_job(native, spark=ctx.spark, force=True),
        COMPILED: lambda: run_job(spec, spark=ctx.spark, force=True),
        SMALL: lambda: run_job(small, spark=ctx.spark, force=True),
        SMALL_FIRST: lambda: run_job(_forget(remembered, small), spark=ctx.spark, force=True),
    }
    print("   tree_job: warm-up (untimed) ...", flush=True)
    _fresh(out, variants[COMPILED])  # also compiles the models into the cache
    _fresh(root / "out_60", variants[SMALL])
    times, runs, outputs, native_rows = {}, {}, {}, n
    for name, fn in variants.items():
        repeats = 1 if name == NATIVE else ctx.repeats
        target = root / "out_60" if name in (SMALL, SMALL_FIRST) else out
        times[name], result, runs[name] = timed_runs(
            lambda fn=fn, target=target: _fresh(target, fn), repeats, budget_s=REPEAT_BUDGET_S
        )
        print(f"   tree_job: {name}: {times[name]:.2f} s ({runs[name]} run(s))", flush=True)
        if name in (NATIVE, COMPILED):
            outputs[name] = _output(out)
        if name == NATIVE:
            native_rows = int(result.rows)
    same = _same(outputs[NATIVE], _sampled(outputs[COMPILED]))
    native_ran = times[NATIVE]
    times[NATIVE] = scaled(native_ran, native_rows, n)  # compared at its rate over all rows
    native_bound = times[NATIVE_BOUND]
    rows = []
    for name, sec in times.items():
        note = f"{sec / native_bound:.2f}x the native bound; {runs[name]} run(s)"
        if name == NATIVE:
            note = (
                f"SAMPLE: {native_rows:,} of {n:,} rows ({sample}), ratios at its rate "
                f"({sec:.1f} s for all rows); " + note
            )
            rows.append(Row(TREE_SCENARIO, name, native_rows, native_ran, NATIVE, native_ran,
                            note, peak_rss_mb()))  # fmt: skip
            continue
        if name == SMALL_FIRST:
            note += (
                "; this job's remembered key checks forgotten before each run: one per dimension"
            )
            ctx.notes.append(
                f"tree_job: the {SMALL_ROUNDS}-tree job's first run over new dimension "
                f"snapshots (keys checked) is {sec / native_bound:.2f}x the native bound."
            )
        if name == SMALL:
            note += (
                f" (target <= 1.3); {SMALL_ROUNDS} trees, output predict; dimensions unchanged "
                "since their keys were checked"
            )
            ctx.notes.append(
                f"tree_job: the {SMALL_ROUNDS}-tree LightGBM regressor job is "
                f"{sec / native_bound:.2f}x the native bound (target <= 1.3)."
            )
        if name == COMPILED:
            note += (
                f"; {times[NATIVE] / sec:.2f}x faster than strategy native (target >= 3); "
                f"same output as native (labels identical, rtol 1e-12): {same}"
            )
            ctx.notes.append(
                f"tree_job: compiled trees {times[NATIVE] / sec:.2f}x the same job with "
                f"strategy: native ({n:,} rows, {CLASSES * ROUNDS} trees, 198 features); "
                f"{sec / native_bound:.2f}x the native bound."
            )
        rows.append(
            Row(
                TREE_SCENARIO,
                name,
                n,
                sec,
                NATIVE,
                times[NATIVE],
                note,
                peak_rss_mb(),
            )
        )
    return rows


def _check_entries(plan: Any) -> list[str]:
    """The memo keys of this job's dimension key checks."""
    from batchscore.plan import checked_keys
    from batchscore.plan.nodes import Join

    return [checked_keys.memo_key(plan, n) for n in plan.nodes() if isinstance(n, Join)]


def _forget(keys: list[str], spec: Any) -> Any:
    """`spec`, whose next run checks these dimensions' keys again."""
    from batchscore.plan import checked_keys

    for key in keys:
        checked_keys.forget(key)
    return spec


def _output(path: Path) -> tuple[np.ndarray, Any, np.ndarray]:
    """(ids, labels, flattened probabilities) of the table, by id."""
    from deltalake import DeltaTable

    table = DeltaTable(str(path)).to_pyarrow_table(columns=["id", "label", "probability"])
    table = table.sort_by("id")
    proba = np.asarray(table["probability"].combine_chunks().flatten().to_numpy(), dtype=float)
    ids = np.asarray(table["id"].combine_chunks().to_numpy())
    return ids, table["label"].combine_chunks(), proba


def _sampled(output: tuple[np.ndarray, Any, np.ndarray]) -> tuple[np.ndarray, Any, np.ndarray]:
    """The rows of a full output that the sampled `strategy: native` run scored."""
    import pyarrow as pa

    ids, labels, proba = output
    keep = np.asarray(ids) % SLOW_SAMPLE == 0
    width = len(proba) // max(len(ids), 1)
    return ids[keep], labels.filter(pa.array(keep)), proba.reshape(-1, width)[keep].ravel()


def _same(a: tuple[np.ndarray, Any, np.ndarray], b: tuple[np.ndarray, Any, np.ndarray]) -> bool:
    """Same ids, identical labels, probabilities within rtol 1e-12."""
    return bool(
        np.array_equal(a[0], b[0])
        and a[1].equals(b[1])
        and np.allclose(a[2], b[2], rtol=1e-12, atol=1e-15)
    )
