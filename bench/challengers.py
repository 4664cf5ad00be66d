"""Shadow models at benchmark size (issue 15's target).

A fact table of FEATURES numeric columns, ROWS rows on the scored date (quick: fewer). Two
pairs of models on the same features: logistic regressions (GLM) and LightGBM classifiers
(TREES trees each). Per pair, the job with the champion alone and with the challenger as
`shadow_of` it (forced reruns, interleaved, medians of 5): the shadow rides in the same pass (same
scan, same assembled matrix). Targets: a GLM shadow adds <= 10% to the job's time; a tree
shadow adds at most its own kernel's time (measured here too: the compiled challenger scoring
the same rows in this process, on the job's threads).

`python -m bench.challengers [--quick]` runs it alone; `bench/run.py` runs it with the others.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bench.harness import Context, Row, interleaved, peak_rss_mb, standalone, timed

FEATURES = 20
ROWS, QUICK_ROWS = 1_000_000, 100_000
TREES = 100
DAY = "2026-11-02"
REPEATS = 5
"""Timed runs per variant (interleaved; the median is reported): a 1.5 s job wobbles by 0.2 s."""


def _build(root: Path, rows: int) -> dict[str, Path]:
    import joblib
    import lightgbm as lgb
    import pyarrow as pa
    from deltalake import write_deltalake
    from sklearn.linear_model import LogisticRegression

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(9)
    data = rng.normal(size=(rows, FEATURES))
    table = pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            "ds": np.full(rows, DAY),
            **{f"f{j:02d}": data[:, j] for j in range(FEATURES)},
        }
    )
    write_deltalake(str(root / "facts"), table, partition_by=["ds"])
    train = data[:50_000]
    y = train[:, :5].sum(axis=1) + rng.normal(size=len(train)) > 0
    paths = {}
    for name, model in (
        ("glm_a", LogisticRegression(C=1.0)),
        ("glm_b", LogisticRegression(C=0.01)),
        ("gbm_a", lgb.LGBMClassifier(n_estimators=TREES, num_leaves=31, verbose=-1)),
        ("gbm_b", lgb.LGBMClassifier(n_estimators=TREES, num_leaves=31, seed=7, verbose=-1)),
    ):
        model.fit(train, y)
        paths[name] = root / f"{name}.joblib"
        joblib.dump(model, paths[name])
    return paths


def _spec(root: Path, paths: dict[str, Path], champion: str, shadow: str | None) -> Path:
    from batchscore.datasets._write import sha256_file

    features = ", ".join(f"f{j:02d}" for j in range(FEATURES))
    text = (
        "name: challengers_bench\n"
        "tables:\n  facts: {path: facts, partition_by: [ds]}\n"
        "source: {table: facts, where: \"ds = '{run_date}'\", id_columns: [id, ds]}\n"
        "models:\n"
    )
    for name in [champion] + ([shadow] if shadow else []):
        text += (
            f"  - name: {name}\n    path: {paths[name].name}\n"
            f"    sha256: {sha256_file(paths[name])}\n    features: [{features}]\n"
        )
        if name == shadow:
            text += f"    shadow_of: {champion}\n"
    text += "output: {path: out_" + champion + ", partition_by: [ds], mode: overwrite_partitions}\n"
    spec = root / f"{champion}{'_' + shadow if shadow else ''}.yaml"
    spec.write_text(text)
    return spec


def _kernel_seconds(path: Path, rows: int) -> float:
    """The challenger's kernel alone on `rows` rows of its inputs (median of 3)."""
    import joblib

    from batchscore.models.compiled import compile_from_object

    model = compile_from_object("kernel", joblib.load(path), n_features_hint=FEATURES)
    X = np.random.default_rng(1).normal(size=(rows, FEATURES))
    seconds, _ = timed(lambda: model.score(X), 3)
    return seconds


def run(ctx: Context) -> list[Row]:
    import batchscore as bs

    rows = QUICK_ROWS if ctx.quick else ROWS
    root = ctx.workdir / "challengers"
    paths = _build(root, rows)
    out: list[Row] = []
    for champion, shadow, label in (("glm_a", "glm_b", "GLM"), ("gbm_a", "gbm_b", "LightGBM")):
        alone = bs.load_spec(_spec(root, paths, champion, None), run_date=DAY)
        paired = bs.load_spec(_spec(root, paths, champion, shadow), run_date=DAY)
        bs.run(alone, spark=ctx.spark)  # warm-up: compiled trees, first commit
        bs.run(paired, spark=ctx.spark, force=True)
        total = interleaved(
            {
                key: (lambda s=spec: bs.run(s, spark=ctx.spark, force=True))
                for key, spec in (("alone", alone), ("paired", paired))
            },
            REPEATS,
        )
        kernel = _kernel_seconds(paths[shadow], rows)
        added = total["paired"] - total["alone"]
        target = "<= 1.10x" if label == "GLM" else f"added <= kernel {kernel:.2f} s"
        out += [
            Row("challengers", f"{label} champion alone", rows, total["alone"]),
            Row(
                "challengers",
                f"{label} champion + shadow",
                rows,
                total["paired"],
                extra=(
                    f"{total['paired'] / total['alone']:.2f}x alone; +{added:.2f} s "
                    f"(shadow kernel alone {kernel:.2f} s; target {target})"
                ),
                peak_rss_mb=peak_rss_mb(),
            ),
        ]
    ctx.notes.append(
        f"challengers: {FEATURES} features, {rows:,} rows, one fact file; each pair run alone "
        f"and with a shadow, forced reruns interleaved, medians of {REPEATS}; the "
        "kernel time is the compiled challenger on the same number of rows in the driver."
    )
    return out


def main() -> None:
    standalone(run, __doc__ or "", "smaller data")


if __name__ == "__main__":
    main()
