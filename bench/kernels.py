"""Kernel benchmark: tree strategies against the model's own predict, one thread, same rows.

LightGBM with 100 and 500 trees (num_leaves 31), a RandomForest (100 trees, depth 10) and a
HistGradientBoosting classifier (200 iterations), all trained on a synthetic 20-feature binary
task (20,000 rows; the forest on 5,000 with --quick, where it is the slow one to train), with
two threads (training is not measured; every model then predicts with n_jobs=1). The
baseline is the model's own predict_proba, one call on all 1M rows (50k with --quick), one
thread; "compiled" (batchscore's default: C generated per model) scores all those rows too, in
Arrow-sized batches of 10,000 rows as mapInArrow hands them over, with one thread; "native" (the
library's own predictor behind batchscore's kernel interface: the baseline again, plus the
kernel's batching) the first 100,000 of them, compared at its rate, labelled "(prefix)". The
compiled row's note gives the cold compile time (the cache is a fresh folder for the run).
Where the baseline takes at most PAIRED_MAX_S, it and compiled run in PAIRED_ROUNDS interleaved
rounds (harness.interleaved_runs; both medians from those rounds, and the note gives the median
of per-round ratios), so that a slow spell of the shared machine hits both alike.

The numpy strategies (traversal, perfect; gemm and bitvector with BENCH_ALL_STRATEGIES=1: they
run at 0.00-0.07x and cost minutes) score a fixed PREFIX of the same rows
in the same batches: the first 25,000 (20,000 with --quick). Their rows column says so, their
variant ends in "(prefix)" and their note names the prefix; their ratio compares rows/s with the
baseline's rows/s on all rows (ratio = baseline seconds scaled to the prefix / strategy seconds).
A strategy whose first batch runs below 30,000 rows/s (gemm and bitvector evaluate every node;
on a depth-10 forest they manage ~1k rows/s, which on that prefix would take minutes) scores only
that first batch (5,000 rows; 2,000 with --quick). The first batch is timed after a 1,000-row
warm-up (which builds the kernel's packed arrays). On a busy machine that pilot can misjudge a
strategy, so a run stops after the batch that passes 60 s and then reports what it scored,
labelled the same way. Repeats stop once a measurement's runs took 10 s (5 s for the numpy
strategies), to keep the scenario within ~3 minutes on two cores; the note gives the number of
runs behind each median.

    python -m bench.kernels            # prints the table; never writes bench/RESULTS.md
    python -m bench.kernels --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import Context, Row, interleaved_runs, paired_ratio, peak_rss_mb, timed_runs

NEEDS_SPARK = False  # bench/run.py starts no SparkSession for this scenario
BATCH = 10_000
ROWS, QUICK_ROWS = 1_000_000, 50_000
PREFIX, QUICK_PREFIX = 25_000, 20_000  # rows the numpy strategies score
NATIVE_PREFIX = 100_000  # rows "native" scores: the library's predictor again, at its rate
PILOT, QUICK_PILOT = 5_000, 2_000  # the first batch; all that a slow strategy scores
TRAIN_ROWS = 20_000
QUICK_FOREST_ROWS = 5_000  # --quick trains the forest (the slow one to train) on fewer rows
SLOW_ROWS_PER_S = 30_000  # LightGBM-100 gemm/bitvector run near 20k: clear of both sides
BUDGET_S = 6.0  # repeats of the baseline and native stop once their runs took this long
PREFIX_BUDGET_S = 3.0  # the same for the numpy strategies on their prefix
CAP_S = 60.0
PAIRED_MAX_S = 6.0
"""A model whose own predict_proba of all rows takes at most this long is timed in rounds with
the compiled kernel (PAIRED_ROUNDS); a slower one (LightGBM 500 trees, ~15 s) once."""
PAIRED_ROUNDS = 3
N_FEATURES = 20
NATIVE = "native"
COMPILED = "compiled"
FULL_RUN = (COMPILED,)  # strategies that score every row
STRATEGIES = (COMPILED, NATIVE, "traversal", "perfect") + (
    ("gemm", "bitvector") if os.environ.get("BENCH_ALL_STRATEGIES") else ()
)
BASELINE = "own predict_proba (1 thread, one call on all rows)"


def _models(forest_rows: int = TRAIN_ROWS) -> list[tuple[str, Any]]:
    import lightgbm as lgb
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(TRAIN_ROWS, N_FEATURES))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=X.shape[0]) > 0).astype(int)
    out: list[tuple[str, Any]] = []
    for trees in (100, 500):
        model = lgb.LGBMClassifier(n_estimators=trees, num_leaves=31, verbose=-1, n_jobs=2)
        out.append((f"lightgbm-{trees}-trees", model.fit(X, y)))
    rf = RandomForestClassifier(100, max_depth=10, n_jobs=2, random_state=0)
    out.append(("random-forest-100-trees", rf.fit(X[:forest_rows], y[:forest_rows])))
    hgb = HistGradientBoostingClassifier(max_iter=200, early_stopping=False, random_state=0)
    out.append(("hist-gradient-boosting-200", hgb.fit(X, y)))
    return out


@contextmanager
def _one_thread() -> Iterator[None]:
    """One thread everywhere: BLAS/OpenMP pools and batchscore's LightGBM predictor.

    The models' own predict gets n_jobs=1, which LightGBM's predict turns into num_threads=1
    and which keeps sklearn's forest predict sequential.
    """
    from threadpoolctl import threadpool_limits

    before = os.environ.get("BATCHSCORE_THREADS")
    os.environ["BATCHSCORE_THREADS"] = "1"
    try:
        with threadpool_limits(1):
            yield
    finally:
        if before is None:
            del os.environ["BATCHSCORE_THREADS"]
        else:
            os.environ["BATCHSCORE_THREADS"] = before


def _measure(
    fn: Callable[[], Any], repeats: int, first: float | None = None, budget_s: float = BUDGET_S
) -> tuple[float, int]:
    """Median seconds and number of runs (harness.timed_runs, with this scenario's budget)."""
    seconds, _, runs = timed_runs(fn, repeats, budget_s, first)
    return seconds, runs


def _batched(kernel: Any, X: np.ndarray) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, X.shape[0], BATCH):
            kernel.score(X[start : start + BATCH])

    return run


def _capped(kernel: Any, X: np.ndarray, want: np.ndarray) -> tuple[float, int, float]:
    """Seconds and rows of one run over X in batches, stopped after the batch passing CAP_S, and
    the largest |probability - own predict_proba| over those rows (computed after the clock)."""
    got: list[np.ndarray] = []
    start = time.perf_counter()
    done = 0
    while done < X.shape[0] and time.perf_counter() - start < CAP_S:
        got.append(kernel.score(X[done : done + BATCH]).probability)
        done = min(X.shape[0], done + BATCH)
    seconds = time.perf_counter() - start
    return seconds, done, float(np.max(np.abs(np.concatenate(got) - want[:done])))


def _pilot(kernel: Any, X: np.ndarray, want: np.ndarray, rows: int) -> tuple[float, float]:
    """Seconds for the first batch of `rows`, and its largest |probability - own predict_proba|.

    A 1,000-row call first builds the kernel's packed arrays, which are not per-row work.
    """
    kernel.score(X[:1_000])
    start = time.perf_counter()
    got = kernel.score(X[:rows]).probability
    seconds = time.perf_counter() - start
    return seconds, float(np.max(np.abs(got - want[:rows])))


def _strategy_row(
    scenario: str,
    strategy: str,
    kernel: Any,
    X: np.ndarray,
    base: tuple[float, np.ndarray],
    ctx: Context,
    paired: Paired | None = None,
) -> Row:
    """One strategy's row. compiled scores all rows of X, native the first NATIVE_PREFIX, the
    numpy strategies the first PREFIX rows; a strategy slower than SLOW_ROWS_PER_S on its
    first batch only that batch."""
    base_s, want = base
    n_rows = X.shape[0]
    pilot = min(n_rows, QUICK_PILOT if ctx.quick else PILOT)
    target = n_rows if strategy in FULL_RUN else min(n_rows, _prefix(strategy, ctx))
    budget = BUDGET_S if strategy in (COMPILED, NATIVE) else PREFIX_BUDGET_S
    pilot_s, diff = _pilot(kernel, X, want, pilot)
    runs_note = ""  # the note on the runs behind the median, where not "N run(s)"
    rate = pilot / pilot_s
    if rate >= SLOW_ROWS_PER_S and target > pilot:
        first, done, worst = _capped(kernel, X[:target], want)
        part, diff = X[:done], max(diff, worst)
        if done == n_rows and paired is not None:
            variant, scope = strategy, f"all {n_rows:,} rows"
            secs, runs = statistics.median(paired.compiled), len(paired.compiled)
            runs_note = paired.note
        elif done == n_rows:
            variant, scope = strategy, f"all {n_rows:,} rows"
            secs, runs = _measure(_batched(kernel, part), ctx.repeats, first, budget)
        elif done == target:
            variant = f"{strategy} (prefix)"
            scope = f"PREFIX: first {done:,} of the {n_rows:,} rows"
            secs, runs = _measure(_batched(kernel, part), ctx.repeats, first, budget)
        else:  # the pilot misjudged it (a busy machine): what ran in CAP_S is the prefix
            variant = f"{strategy} (prefix)"
            scope = f"PREFIX: first {done:,} of the {n_rows:,} rows (run stopped at {CAP_S:.0f} s)"
            secs, runs = first, 1
    else:
        part, variant = X[:pilot], f"{strategy} (prefix)"
        scope = (
            f"PREFIX: first {pilot:,} of the {n_rows:,} rows (first batch "
            f"{rate:,.0f} rows/s < {SLOW_ROWS_PER_S:,})"
        )
        secs, runs = _measure(_batched(kernel, part), ctx.repeats, pilot_s, budget)
    how = ""
    if strategy == NATIVE:
        how = f"; native = {getattr(kernel, 'native', kernel).kind} kernel"
    elif strategy == COMPILED:
        info = kernel.compiled.info
        how = f"; {info.describe()}; cold compile {info.seconds:.1f} s"
    return Row(
        scenario=f"kernels/{scenario}",
        variant=variant,
        rows=part.shape[0],
        seconds=secs,
        baseline=BASELINE,
        baseline_seconds=base_s * part.shape[0] / n_rows,
        extra=f"{scope}; {runs_note or f'{runs} run(s)'}; max |p - own p| {diff:.1e}{how}",
        peak_rss_mb=peak_rss_mb(),
    )


def _prefix(strategy: str, ctx: Context) -> int:
    if strategy == NATIVE:
        return NATIVE_PREFIX
    return QUICK_PREFIX if ctx.quick else PREFIX


def _scenario(name: str, model: Any, X: np.ndarray, ctx: Context) -> list[Row]:
    from batchscore.errors import ModelError
    from batchscore.models import compile_from_object

    if "n_jobs" in model.get_params():
        model.set_params(n_jobs=1)
    model.predict_proba(X[:BATCH])  # warm-up
    own: list[np.ndarray] = []  # the last run's output: the parity reference

    def baseline() -> None:
        own[:] = [model.predict_proba(X)]

    first = timed_runs(baseline, 1)[0]
    kernels: dict[str, Any] = {}
    for strategy in STRATEGIES:
        try:
            kernels[strategy] = compile_from_object("m", model, strategy=strategy).kernel
        except ModelError as exc:
            ctx.notes.append(f"{name} {strategy}: {exc}")
    paired = None
    if COMPILED in kernels and first <= PAIRED_MAX_S and not ctx.quick:
        paired = _paired_rounds(baseline, kernels[COMPILED], X)
        base_s, runs = statistics.median(paired.own), len(paired.own)
    else:
        base_s, runs = _measure(baseline, ctx.repeats, first)
    want = own[0]
    how = f"{runs} run(s)" if paired is None else f"{runs} run(s) interleaved with compiled"
    rows = [
        Row(
            scenario=f"kernels/{name}",
            variant="own predict_proba",
            rows=X.shape[0],
            seconds=base_s,
            baseline=BASELINE,
            baseline_seconds=base_s,
            extra=f"the baseline: {type(model).__name__}, n_jobs=1; {how}",
            peak_rss_mb=peak_rss_mb(),
        )
    ]
    for strategy, kernel in kernels.items():
        rows.append(
            _strategy_row(
                name,
                strategy,
                kernel,
                X,
                (base_s, want),
                ctx,
                paired if strategy == COMPILED else None,
            )
        )
    return rows


@dataclass(frozen=True)
class Paired:
    """Own predict and compiled on all rows, in the same rounds (harness.interleaved_runs)."""

    own: list[float]
    compiled: list[float]

    @property
    def note(self) -> str:
        ratio = 1 / paired_ratio(self.compiled, self.own)
        return (
            f"{len(self.compiled)} run(s) interleaved with own predict_proba, paired "
            f"{ratio:.2f}x (median of per-round ratios)"
        )


def _paired_rounds(baseline: Callable[[], None], kernel: Any, X: np.ndarray) -> Paired:
    """A slow spell of the shared machine then hits both alike, where measuring one after the
    other let it land on one (RandomForest's published ratio read 2.88x, 3.57-3.78x in runs of
    this scenario alone)."""
    kernel.score(X[:1_000])  # builds the packed arrays, not per-row work
    runs = interleaved_runs({"own": baseline, COMPILED: _batched(kernel, X)}, PAIRED_ROUNDS)
    return Paired(runs["own"], runs[COMPILED])


def run(ctx: Context) -> list[Row]:
    """Every model x strategy; compiled forests go to a fresh cache, so compiles are cold."""
    os.environ["BATCHSCORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-compile-cache-")
    n_rows = QUICK_ROWS if ctx.quick else ROWS
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n_rows, N_FEATURES))
    X[rng.random(X.shape) < 0.01] = np.nan
    rows: list[Row] = []
    models = _models(QUICK_FOREST_ROWS if ctx.quick else TRAIN_ROWS)
    with _one_thread():
        for name, model in models:
            rows += _scenario(name, model, X, ctx)
    return rows


def _print(rows: list[Row], notes: list[str]) -> None:
    print(
        f"{'scenario':34} {'strategy':22} {'rows':>9} {'rows/s':>10} "
        f"{'own predict rows/s':>19} {'ratio':>7}  notes"
    )
    for r in rows:
        base = r.rows / r.baseline_seconds if r.baseline_seconds else float("nan")
        ratio = r.ratio if r.ratio is not None else float("nan")
        print(
            f"{r.scenario:34} {r.variant:22} {r.rows:9,} {r.rows_per_second:10,.0f} "
            f"{base:19,.0f} {ratio:7.3f}  {r.extra}"
        )
    for note in notes:
        print("note:", note)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="50k rows (20k prefix) instead of 1M (100k)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per median (within 10 s)")
    args = parser.parse_args()
    ctx = Context(quick=args.quick, repeats=args.repeats, workdir=Path(tempfile.mkdtemp()))
    started = time.perf_counter()
    rows = run(ctx)
    _print(rows, ctx.notes)
    print(f"kernels scenario: {time.perf_counter() - started:,.0f} s (including training)")


if __name__ == "__main__":
    main()
