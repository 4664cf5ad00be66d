"""A synthetic star schema swept over tuple ratio and feature ratio (the Morpheus axes).

fact: N rows, 10 float features and a foreign key; dim: N / TR rows, a key and an
array<double> feature of width FR x 10. One binary logistic regression reads all of them.
Then the same star with a LightGBM model (30 trees, 31 leaves) instead of the regression at
TREE_POINTS: materialized (planner.factorize: never), factorized (always) and the planner's
choice, to show where factorized trees win (a wide, dense dimension) and that the planner
picks the faster plan.
N is 300k (100k and two corners of the grid with --quick). For each (TR, FR): batchscore with
every rule off (materialize, then score), batchscore optimized (the planner decides), and the
bound (the same scans, join and Delta write with the score replaced by a constant), in one
Spark session on the same tables. In the full run the first point's bound and optimized job
run once untimed first (the session's first jobs); then each variant's time is the median of 2
runs (their mean; 1 with --quick; 3 at the tree points), the variants taking turns run by run
(harness.interleaved), which keeps the 27 variants of the full grid near 80 s on two cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    Context,
    Row,
    interleaved,
    interleaved_runs,
    medians,
    paired_ratio,
    peak_rss_mb,
)
from bench.morpheus import NATIVE_BOUND, _bound, _native_bound

FACT_FEATURES = 10
TUPLE_RATIOS = (10, 100, 1000)
FEATURE_RATIOS = (0.5, 2.0, 10.0)
QUICK_POINTS = [(10, 0.5), (1000, 10.0)]
TREE_POINTS = [(10, 2.0), (100, 10.0), (100, 50.0)]
QUICK_TREE_POINTS = [(100, 50.0)]
TREE_ROUNDS = 30
REPEATS = 2  # runs per variant in the full run (the warm-up takes the first jobs' costs)
TREE_REPEATS = 3  # the tree points: the planner's pick is judged against the other two


def _build(root: Path, n: int, tr: int, fr: float, seed: int = 0, *, trees: bool = False) -> Path:
    import joblib
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake
    from sklearn.linear_model import LogisticRegression

    from batchscore.datasets._write import sha256_file

    rng = np.random.default_rng(seed)
    dim_rows, width = max(1, n // tr), max(1, int(fr * FACT_FEATURES))
    fact_x = rng.normal(size=(n, FACT_FEATURES))
    dim_x = rng.normal(size=(dim_rows, width))
    fk = rng.integers(0, dim_rows, n)
    root.mkdir(parents=True, exist_ok=True)
    fact = {"id": np.arange(n, dtype=np.int64), "ds": np.full(n, "2026-11-21"), "fk": fk}
    fact.update({f"f{i}": fact_x[:, i] for i in range(FACT_FEATURES)})
    write_deltalake(str(root / "fact"), pa.table(fact), partition_by=["ds"], mode="overwrite")
    (root / "dim").mkdir(exist_ok=True)
    dim = pa.table({"key": np.arange(dim_rows, dtype=np.int64), "x": pa.array(list(dim_x))})
    pq.write_table(dim, root / "dim" / "part-0.parquet")
    sample = rng.integers(0, n, 5000)
    X = np.c_[fact_x[sample], dim_x[fk[sample]]]
    y = X @ rng.normal(size=X.shape[1]) > 0
    if trees:
        import lightgbm as lgb

        model: Any = lgb.LGBMClassifier(
            n_estimators=TREE_ROUNDS, num_leaves=31, verbose=-1, n_jobs=1
        ).fit(X, y)
    else:
        model = LogisticRegression(max_iter=300).fit(X, y)
    joblib.dump(model, root / "model.joblib")
    features = ", ".join([*(f"f{i}" for i in range(FACT_FEATURES)), "dim.x"])
    spec = root / "job.yaml"
    spec.write_text(
        "\n".join([
            "name: star_sweep",
            "tables:",
            "  fact: {path: fact, format: delta, partition_by: [ds]}",
            "  dim: {path: dim, format: parquet, key: key}",
            "source:",
            "  table: fact",
            "  joins: [{table: dim, on: {fk: key}}]",
            "  id_columns: [id, ds]",
            "models:",
            "  - name: glm",
            "    path: model.joblib",
            f"    sha256: {sha256_file(root / 'model.joblib')}",
            f"    features: [{features}]",
            "    output: predict_proba",
            "output: {path: out, partition_by: [ds], mode: overwrite_partitions}",
            "",
        ])
    )  # fmt: skip
    return spec


def run(ctx: Context) -> list[Row]:
    n = 100_000 if ctx.quick else 300_000
    points = QUICK_POINTS if ctx.quick else [(t, f) for t in TUPLE_RATIOS for f in FEATURE_RATIOS]
    rows: list[Row] = []
    for i, (tr, fr) in enumerate(points):
        rows += _point(ctx, n, tr, fr, warm_up=i == 0 and not ctx.quick)
    for tr, fr in QUICK_TREE_POINTS if ctx.quick else TREE_POINTS:
        rows += _tree_point(ctx, n, tr, fr)
    return rows


NEVER = "materialized (factorize: never)"
ALWAYS = "factorized (factorize: always)"
PLANNER = "batchscore optimized (planner)"


def _tree_point(ctx: Context, n: int, tr: int, fr: float) -> list[Row]:
    """LightGBM through the star: both plans and the planner's pick, outputs compared."""
    from batchscore.jobs.run import run_job
    from batchscore.spec import load_spec

    root = ctx.workdir / "star_sweep" / f"trees_n{n}_tr{tr}_fr{fr:g}"
    spec_path = root / "job.yaml"
    if not spec_path.exists():
        _build(root, n, tr, fr, trees=True)
    base = load_spec(spec_path)

    def spec_with(mode: str) -> Any:
        planner = base.planner.model_copy(update={"factorize": mode})
        return base.model_copy(update={"planner": planner})

    out = root / "out"
    variants = {
        NEVER: lambda: run_job(spec_with("never"), spark=ctx.spark, force=True),
        ALWAYS: lambda: run_job(spec_with("always"), spark=ctx.spark, force=True),
        PLANNER: lambda: run_job(base, spark=ctx.spark, force=True),
    }
    _fresh(out, variants[PLANNER])  # untimed: compiles the model and its fact side once
    outputs: dict[str, np.ndarray] = {}
    repeats = min(ctx.repeats, TREE_REPEATS)
    runs = {name: (lambda fn=fn: _fresh(out, fn)) for name, fn in variants.items()}
    rounds = interleaved_runs(
        runs, repeats, after=lambda name: outputs.update({name: _probabilities(out)})
    )
    times = medians(rounds)
    same = all(np.allclose(outputs[k], outputs[NEVER], rtol=1e-9, atol=1e-12) for k in outputs)
    better = NEVER if times[NEVER] <= times[ALWAYS] else ALWAYS
    rows = []
    for name, sec in times.items():
        note = f"{times[NEVER] / sec:.2f}x materialized; {repeats} run(s)"
        if name == PLANNER:
            note += (
                f"; planner: {_decision(base, 'factorize_trees')}; "
                f"{sec / times[better]:.2f}x the better plan's time, paired "
                f"{paired_ratio(rounds[PLANNER], rounds[better]):.2f}x (median of per-round "
                f"ratios); outputs equal (rtol 1e-9): {same}"
            )
        rows.append(
            Row(f"star trees TR={tr} FR={fr:g}", name, n, sec, "", None, note, peak_rss_mb())
        )
    return rows


def _probabilities(out: Path) -> np.ndarray:
    from deltalake import DeltaTable

    table = DeltaTable(str(out)).to_pyarrow_table().sort_by("id")
    return np.asarray(table.column("prediction").to_numpy(zero_copy_only=False), dtype=float)


BOUND = "bound (scan+join+write, constant score)"
NAIVE = "batchscore naive (no rules)"
OPTIMIZED = "batchscore optimized"


def _point(ctx: Context, n: int, tr: int, fr: float, *, warm_up: bool = False) -> list[Row]:
    from batchscore.jobs.run import plan_job, run_job
    from batchscore.plan.rules import eliminate_unused_joins, prune_columns, prune_partitions
    from batchscore.spec import load_spec

    root = ctx.workdir / "star_sweep" / f"n{n}_tr{tr}_fr{fr:g}"
    spec_path = root / "job.yaml"
    if not spec_path.exists():
        _build(root, n, tr, fr)
    spec = load_spec(spec_path)
    plan = plan_job(spec, rules=(eliminate_unused_joins, prune_partitions, prune_columns))
    out = root / "out"
    variants: dict[str, Any] = {
        NATIVE_BOUND: lambda: _native_bound(ctx.spark, plan, out),
        BOUND: lambda: _bound(ctx.spark, plan, out),
        NAIVE: lambda: run_job(spec, spark=ctx.spark, rules=(), force=True),
        OPTIMIZED: lambda: run_job(spec, spark=ctx.spark, force=True),
    }
    if warm_up:  # untimed: the session's first jobs
        for name in (BOUND, OPTIMIZED):
            _fresh(out, variants[name])
    repeats = min(ctx.repeats, REPEATS)
    times = interleaved(
        {name: (lambda fn=fn: _fresh(out, fn)) for name, fn in variants.items()}, repeats
    )
    rows = []
    for name, sec in times.items():
        note = (
            f"{sec / times[NATIVE_BOUND]:.2f}x the native bound; {sec / times[BOUND]:.2f}x the "
            f"bound; {repeats} run(s)"
        )
        if name == OPTIMIZED:
            note += (
                f"; {times[NAIVE] / sec:.2f}x faster than naive; planner: "
                f"{_decision(spec, 'factorize_linear')}"
            )
        rows.append(Row(f"star TR={tr} FR={fr:g}", name, n, sec, "", None, note, peak_rss_mb()))
    return rows


def _decision(spec: Any, rule: str) -> str:
    from batchscore.jobs.run import plan_job

    plan = plan_job(spec)
    for d in plan.decisions:
        if d.rule == rule and ": " in d.text:
            return d.text.split(" (")[0].split(": ", 1)[1]
    return "no join decision"


def _fresh(out: Path, fn: Any) -> Any:
    shutil.rmtree(out, ignore_errors=True)
    return fn()
