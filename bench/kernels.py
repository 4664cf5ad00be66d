"""Kernel benchmark: tree strategies against the model's own predict, one thread, same rows.

LightGBM with 100 and 500 trees (num_leaves 31) and a RandomForest (100 trees, depth 10), all
trained on a synthetic 20-feature binary task; each strategy scores the same 1M rows (200k with
--quick) in Arrow-sized batches of 10,000 rows, as mapInArrow hands them over; the baseline is
the model's own predict_proba on the whole matrix with one thread.

    python -m bench.kernels --quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import Context, Row, timed

BATCH = 10_000
STRATEGIES = ("native", "traversal", "perfect", "gemm", "bitvector")


def _models(n_features: int) -> list[tuple[str, Any, tuple[np.ndarray, np.ndarray]]]:
    import lightgbm as lgb
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, n_features))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=X.shape[0]) > 0).astype(int)
    out: list[tuple[str, Any, tuple[np.ndarray, np.ndarray]]] = []
    for trees in (100, 500):
        model = lgb.LGBMClassifier(n_estimators=trees, num_leaves=31, verbose=-1, n_jobs=1)
        out.append((f"lightgbm-{trees}-trees", model.fit(X, y), (X, y)))
    rf = RandomForestClassifier(100, max_depth=10, n_jobs=1, random_state=0)
    out.append(("random-forest-100-trees", rf.fit(X, y), (X, y)))
    return out


def _batched(fn: Callable[[np.ndarray], Any], X: np.ndarray) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, X.shape[0], BATCH):
            fn(X[start : start + BATCH])

    return run


def run(ctx: Context) -> list[Row]:
    os.environ.setdefault("BATCHSCORE_THREADS", "1")
    from threadpoolctl import threadpool_limits

    from batchscore.errors import ModelError
    from batchscore.models import compile_from_object

    n_rows = 200_000 if ctx.quick else 1_000_000
    rows: list[Row] = []
    rng = np.random.default_rng(1)
    with threadpool_limits(1):
        for scenario, model, _ in _models(20):
            X = rng.normal(size=(n_rows, 20))
            X[rng.random(X.shape) < 0.01] = np.nan
            if hasattr(model, "n_jobs"):
                model.set_params(n_jobs=1)
            base_s, _ = timed(lambda m=model, x=X: m.predict_proba(x), ctx.repeats)
            for strategy in STRATEGIES:
                try:
                    kernel = compile_from_object("m", model, strategy=strategy).kernel
                except ModelError as exc:
                    ctx.notes.append(f"{scenario} {strategy}: {exc}")
                    continue
                # the array strategies are slow: time them on a slice, report rows/s
                part = X if strategy == "native" else X[: max(BATCH, n_rows // 10)]
                secs, _ = timed(_batched(kernel.score, part), ctx.repeats)
                rows.append(
                    Row(
                        scenario=f"kernels/{scenario}",
                        variant=strategy,
                        rows=part.shape[0],
                        seconds=secs,
                        baseline="own predict_proba (1 thread)",
                        baseline_seconds=base_s * part.shape[0] / n_rows,
                        extra=kernel.describe().split("; ", 1)[-1][:80],
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    ctx = Context(quick=args.quick, repeats=args.repeats, workdir=Path(tempfile.mkdtemp()))
    rows = run(ctx)
    print(f"{'scenario':34} {'strategy':10} {'rows/s':>12} {'own predict rows/s':>19} {'ratio':>7}")
    for r in rows:
        base = r.rows / r.baseline_seconds if r.baseline_seconds else float("nan")
        ratio = r.ratio if r.ratio is not None else float("nan")
        print(
            f"{r.scenario:34} {r.variant:10} {r.rows_per_second:12,.0f} {base:19,.0f} {ratio:7.3f}"
        )
    for note in ctx.notes:
        print("note:", note)


if __name__ == "__main__":
    main()
