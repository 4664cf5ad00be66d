"""Reruns and housekeeping at benchmark size.

1. reruns: the demo job (80k sales/day, 3 models: 240k prediction rows; quick: 10k sales)
   committed for one run date, then N reruns of that same date (N=30; quick: 5). A rerun of a
   committed (job, run date) must be a no-op: the row shows the time per rerun, and the table
   must hold exactly one copy of each (sale_id, model). A few forced reruns (3; quick: 1),
   which replace the partition, follow, with the same check.
2. daily + optimize: the sales table arrives as several loads a day (FILES_PER_DAY files per
   date, like hourly upstream batches), so each daily run reads several files in several tasks
   and writes one small file per task. 12 daily runs (quick: 3) through the backfill
   (`--from/--to`), then `optimize`: the live file count and the median time of an aggregate
   query over the whole table, before and after compaction (the answers must be identical).

`python -m bench.reruns [--quick]` runs it alone; `bench/run.py` runs it with the others.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.harness import Context, Row, peak_rss_mb, standalone, timed

QUERY = (
    "SELECT model, count(*) AS n, round(avg(prediction), 9) AS mean "
    "FROM preds GROUP BY model ORDER BY model"
)
FILES_PER_DAY = 4
QUERY_REPEATS, QUICK_QUERY_REPEATS = 5, 3
RERUNS, QUICK_RERUNS = 30, 5
FORCED, QUICK_FORCED = 3, 1
DAYS, QUICK_DAYS = 12, 3


def _build(root: Path, *, days: int, rows_per_day: int) -> Path:
    from batchscore.datasets.demo import build_demo

    if root.exists():
        shutil.rmtree(root)
    conf = root / "conf" / "demo.yaml"
    build_demo(root, conf_path=conf, days=days, rows_per_day=rows_per_day, seed=11)
    return conf


def _split_sales(root: Path, parts: int) -> None:
    """Rewrite the demo's sales table as `parts` appends, each holding a slice of every date:
    each date partition then has `parts` files, as when upstream loads arrive through the day."""
    import numpy as np
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    sales = root / "data" / "sales"
    table = pa.table(DeltaTable(str(sales)).to_pyarrow_table()).sort_by("sale_id")
    shutil.rmtree(sales)
    slot = np.arange(table.num_rows) % parts
    for i in range(parts):
        piece = table.take(np.nonzero(slot == i)[0])
        write_deltalake(str(sales), piece, mode="append", partition_by=["ds"])


def _one_copy(out: Path) -> tuple[int, bool]:
    import pyarrow as pa
    from deltalake import DeltaTable

    table = pa.table(DeltaTable(str(out)).to_pyarrow_table(columns=["sale_id", "model", "ds"]))
    keys = Counter(zip(table["sale_id"].to_pylist(), table["model"].to_pylist(), strict=True))
    return table.num_rows, all(n == 1 for n in keys.values())


def reruns(ctx: Context) -> list[Row]:
    import batchscore as bs
    from batchscore.sinks.log import table_version

    n = QUICK_RERUNS if ctx.quick else RERUNS
    forced = QUICK_FORCED if ctx.quick else FORCED
    rows_per_day = 10_000 if ctx.quick else 80_000
    conf = _build(ctx.workdir / "reruns_demo", days=1, rows_per_day=rows_per_day)
    spec = bs.load_spec(conf)
    day = "2026-11-21"
    start = time.perf_counter()
    first = bs.run(spec, run_date=day, spark=ctx.spark)
    first_s = time.perf_counter() - start
    assert first.status == "committed", first.summary()
    out = Path(first.output_path)
    version = table_version(out)
    start = time.perf_counter()
    statuses = Counter(bs.run(spec, run_date=day, spark=ctx.spark).status for _ in range(n))
    noop_s = time.perf_counter() - start
    assert statuses == Counter({"skipped": n}), statuses
    assert table_version(out) == version
    rows, single = _one_copy(out)
    assert single and rows == first.rows == rows_per_day * 3, (rows, first.rows)
    start = time.perf_counter()
    for _ in range(forced):
        assert bs.run(spec, run_date=day, spark=ctx.spark, force=True).status == "committed"
    forced_s = time.perf_counter() - start
    rows, single = _one_copy(out)
    assert single and rows == first.rows, (rows, first.rows)
    ctx.notes.append(
        f"reruns: {n} reruns of one committed run date left {rows:,} rows, each (sale_id, "
        f"model) once; {forced} forced reruns (partition replaced) too."
    )
    return [
        Row("reruns", "first run (commit)", first.rows, first_s, peak_rss_mb=peak_rss_mb()),
        Row(
            "reruns",
            f"{n} reruns of a committed date (no-op)",
            n,
            noop_s,
            baseline="first run",
            baseline_seconds=first_s * n,
            extra=f"{noop_s / n * 1000:.0f} ms per rerun; one copy of each row: {single}",
            peak_rss_mb=peak_rss_mb(),
        ),
        Row(
            "reruns",
            f"{forced} forced reruns (overwrite partition)",
            first.rows * forced,
            forced_s,
            extra=f"{forced_s / forced:.1f} s per rerun; one copy of each row: {single}",
            peak_rss_mb=peak_rss_mb(),
        ),
    ]


def daily_then_optimize(ctx: Context) -> list[Row]:
    import batchscore as bs
    from batchscore.jobs.backfill import run_range
    from batchscore.sinks.maintenance import live_files, optimize

    days = QUICK_DAYS if ctx.quick else DAYS
    rows_per_day = 2_000 if ctx.quick else 5_000
    conf = _build(ctx.workdir / "daily_demo", days=days, rows_per_day=rows_per_day)
    _split_sales(conf.parent.parent, FILES_PER_DAY)
    spec = bs.load_spec(conf)
    from datetime import date, timedelta

    last = date(2026, 11, 21)
    first_day = (last - timedelta(days=days - 1)).isoformat()
    start = time.perf_counter()
    results = run_range(
        spec, start=first_day, end=last.isoformat(), spark=ctx.spark, echo=lambda _: None
    )
    daily_s = time.perf_counter() - start
    assert all(r.status == "committed" for r in results), [r.summary() for r in results]
    out = Path(results[-1].output_path)
    total = sum(r.rows for r in results)
    files_before = len(live_files(out))

    def query() -> list[tuple[Any, ...]]:
        df = bs.sql(QUERY, tables={"preds": str(out)}, spark=ctx.spark)
        return [tuple(r) for r in df.collect()]

    query()  # warm the Python workers
    repeats = QUICK_QUERY_REPEATS if ctx.quick else max(ctx.repeats, QUERY_REPEATS)
    before_s, before = timed(query, repeats)
    start = time.perf_counter()
    result = optimize(out)
    optimize_s = time.perf_counter() - start
    files_after = len(live_files(out))
    after_s, after = timed(query, repeats)
    assert before == after, (before, after)
    assert files_after < files_before, (files_before, files_after)
    ctx.notes.append(
        f"daily+optimize: {days} daily runs (sales arriving as {FILES_PER_DAY} files a date), "
        f"{total:,} rows; live files {files_before} -> {files_after}; aggregate query median of "
        f"{repeats}: {before_s:.2f} s -> {after_s:.2f} s, answers identical before and after."
    )
    return [
        Row(
            "daily+optimize",
            f"{days} daily runs (backfill)",
            total,
            daily_s,
            extra=f"{daily_s / days:.1f} s per run date",
            peak_rss_mb=peak_rss_mb(),
        ),
        Row(
            "daily+optimize",
            "optimize (compact)",
            total,
            optimize_s,
            extra=f"files {files_before} -> {files_after}; "
            + result.summary().replace(str(out), "<table>"),
            peak_rss_mb=peak_rss_mb(),
        ),
        Row(
            "daily+optimize",
            "query after optimize",
            total,
            after_s,
            baseline="query before optimize",
            baseline_seconds=before_s,
            extra=(
                f"{files_after} files vs {files_before}; before {before_s:.2f} s (median of "
                f"{repeats}); same answer"
            ),
            peak_rss_mb=peak_rss_mb(),
        ),
    ]


def run(ctx: Context) -> list[Row]:
    return reruns(ctx) + daily_then_optimize(ctx)


def main() -> None:
    standalone(run, __doc__ or "", "N=5, 3 days, smaller data")


if __name__ == "__main__":
    main()
