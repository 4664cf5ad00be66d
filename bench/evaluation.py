"""Evaluation when labels arrive, at benchmark size (issue 15's target).

A long-layout prediction table of DATES run dates x MODELS binary classifiers, LABELS labelled
rows in all (quick: fewer), written as one commit per run date with the lineage a run leaves
(run id, run date), as `batchscore run` would; predictions are synthetic (the evaluation reads
stored predictions, it never rescores). Then one `evaluate` over every date: labels joined to
the predictions, metrics per (run date, model) in one Spark action, memory bounded by one
group. The row reports the wall time and the peak resident memory of all processes.

`python -m bench.evaluation [--quick]` runs it alone; `bench/run.py` runs it with the others.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from bench.harness import Context, Row, peak_rss_mb, standalone

DATES, MODELS = 30, 3
LABELS, QUICK_LABELS = 10_000_000, 300_000
START = date(2026, 10, 1)


def _build(root: Path, labels: int) -> Path:
    import joblib
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake
    from sklearn.linear_model import LogisticRegression

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2_000, 2))
    for m in range(MODELS):
        model = LogisticRegression().fit(X, X[:, 0] + rng.normal(size=2_000) > 0)
        joblib.dump(model, root / f"m{m}.joblib")
    per_day = labels // DATES
    for d in range(DATES):
        ds = (START + timedelta(days=d)).isoformat()
        ids = np.arange(per_day, dtype=np.int64)
        truth = rng.random(per_day) < 0.3
        write_deltalake(
            str(root / "labels"),
            pa.table({"id": ids, "ds": np.full(per_day, ds), "y": truth}),
            mode="append",
        )
        parts = []
        for m in range(MODELS):
            score = np.clip(0.3 + 0.25 * (truth - 0.5) + rng.normal(0, 0.2, per_day), 0, 1)
            parts.append(_predictions(ids, ds, f"m{m}", score))
        run_id = f"bench-{ds}"
        write_deltalake(
            str(root / "out"),
            pa.concat_tables(parts),
            mode="append",
            partition_by=["ds"],
            commit_properties=CommitProperties(
                custom_metadata={
                    "batchscore.run_id": run_id,
                    "batchscore.run_date": ds,
                    "batchscore.job": "eval_bench",
                    "batchscore.models": json.dumps(
                        {f"m{m}": {"version": "1"} for m in range(MODELS)}
                    ),
                }
            ),
        )
    spec = root / "job.yaml"
    models = "".join(
        f"  - {{name: m{m}, path: m{m}.joblib, sha256: {_sha(root / f'm{m}.joblib')}, "
        "features: [a, b]}\n"
        for m in range(MODELS)
    )
    spec.write_text(
        "name: eval_bench\ntables: {facts: {path: labels}}\n"
        "source: {table: facts, id_columns: [id, ds]}\n"
        f"models:\n{models}"
        "output: {path: out, partition_by: [ds]}\nmonitoring: {table: mon}\n"
    )
    return spec


def _sha(path: Path) -> str:
    from batchscore.datasets._write import sha256_file

    return sha256_file(path)


def _predictions(ids: np.ndarray, ds: str, model: str, score: np.ndarray) -> object:
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(ids)
    probability = pa.FixedSizeListArray.from_arrays(
        pa.array(np.column_stack([1 - score, score]).ravel()), 2
    ).cast(pa.list_(pa.float64()))
    label = pc.if_else(pa.array(score >= 0.5), "True", "False")
    return pa.table(
        {
            "id": ids,
            "ds": np.full(n, ds),
            "model": np.full(n, model),
            "model_version": np.full(n, "1"),
            "role": np.full(n, "champion"),
            "served": np.ones(n, dtype=bool),
            "prediction": score,
            "label": label,
            "probability": probability,
            "run_id": np.full(n, f"bench-{ds}"),
        }
    )


def run(ctx: Context) -> list[Row]:
    import batchscore as bs
    from batchscore.jobs.evaluate import evaluate

    labels = QUICK_LABELS if ctx.quick else LABELS
    root = ctx.workdir / "evaluation"
    started = time.perf_counter()
    spec_path = _build(root, labels)
    built = time.perf_counter() - started
    spec = bs.load_spec(spec_path)
    started = time.perf_counter()
    result = evaluate(
        ctx.spark, spec, labels=str(root / "labels"), on=["id", "ds"], label_column="y"
    )
    seconds = time.perf_counter() - started
    dates = {e.run_date for e in result.evaluations}
    assert len(dates) == DATES and len(result.evaluations) == DATES * MODELS, result.lines()
    ctx.notes.append(
        f"evaluation: {DATES} run dates x {MODELS} models, {labels:,} labelled rows "
        f"({labels * MODELS:,} prediction rows, built in {built:.0f} s); one evaluate."
    )
    return [
        Row(
            "evaluation",
            f"evaluate {DATES} dates x {MODELS} models",
            labels,
            seconds,
            extra=f"{len(result.evaluations)} evaluations, {result.rows_written} metric rows",
            peak_rss_mb=peak_rss_mb(),
        )
    ]


def main() -> None:
    standalone(run, __doc__ or "", "300k labelled rows")


if __name__ == "__main__":
    main()
