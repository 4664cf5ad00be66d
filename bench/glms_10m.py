"""k = 32 GLMs against one GLM on the acceptance's own 10M-row table (`make bench-10m`).

The table is bench/glms.py's (100 float64 features, 9.4 GB of Delta); the job is the same
spec, optimized, fused into the Delta write. Runs alternate k = 1 and k = 32 so a slow
stretch of the machine lands on both, after one untimed job on the small table (Spark's first
jobs). Generating the table takes ~3 minutes the first time; each job 1-2 minutes.

The peer (32 predict_batch_udf columns over the materialized table, then the same Delta write)
would take over an hour at this size on 2 cores (126 s at 300k rows), so it runs only when asked:
BENCH_10M_PEER=1, once, after the alternating runs. On the 24 GB, 2-core machine it did not
finish: the kernel's OOM killer stopped the Spark JVM (6.9 GB RSS) with 75 Python processes
alive holding 16.9 GB (the kernel's report; 75 is about 32 UDF columns x 2 running tasks,
plus the driver and daemons).

    python -m bench.run --only bench.glms_10m --out bench/RESULTS-10M.md
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import glms
from bench.harness import Context, Row, peak_rss_mb

ROWS = 10_000_000
QUICK_ROWS = 1_000_000
KS = (1, 32)
ROUNDS = 2


def run(ctx: Context) -> list[Row]:
    from batchscore.jobs.run import run_job
    from batchscore.spec import load_spec

    rows = QUICK_ROWS if ctx.quick else ROWS
    root = ctx.workdir / "glms"
    root.mkdir(parents=True, exist_ok=True)
    glms._warm_up(ctx, root, glms._table(root, glms.QUICK_ROWS))
    table = glms._table(root, rows)
    specs = {k: load_spec(glms._spec(root, table, k)) for k in KS}
    times: dict[int, list[float]] = {k: [] for k in KS}
    for _ in range(1 if ctx.quick else ROUNDS):
        for k in KS:
            start = time.perf_counter()
            run_job(specs[k], spark=ctx.spark, force=True)
            times[k].append(time.perf_counter() - start)
            print(f"   k={k}: {times[k][-1]:.2f} s", flush=True)
    peer = _peer_seconds(ctx, specs[KS[-1]], root) if os.environ.get(PEER_FLAG) == "1" else None
    one = statistics.median(times[KS[0]])
    out = []
    for k in KS:
        seconds = statistics.median(times[k])
        runs = ", ".join(f"{t:.2f}" for t in times[k])
        extra = f"runs: {runs} s; {seconds / one:.2f}x optimized k={KS[0]}"
        last = k == KS[-1]
        if last:
            extra += f"; k={k}/k={KS[0]} = {seconds / one:.2f} (target <= 1.3)"
            note = f"glms at {rows:,} rows: optimized k={k} / k={KS[0]} = {seconds / one:.2f} "
            note += "(target <= 1.3)"
            if peer is not None:
                extra += f"; peer/optimized = {peer / seconds:.1f} (target >= 15)"
                note += f"; peer / optimized at k={k} = {peer / seconds:.1f} (target >= 15)"
            ctx.notes.append(note + ".")
        out.append(
            Row(f"{k} GLMs x {glms.FEATURES} features", glms.OPTIMIZED, rows, seconds,
                "peer" if last and peer else "", peer if last else None, extra, peak_rss_mb())
        )  # fmt: skip
    if peer is not None:
        out.append(Row(f"{KS[-1]} GLMs x {glms.FEATURES} features", glms.PEER, rows, peer,
                       extra="one run", peak_rss_mb=peak_rss_mb()))  # fmt: skip
    return out


PEER_FLAG = "BENCH_10M_PEER"


def _peer_seconds(ctx: Context, spec: Any, root: Path) -> float:
    """One run of the peer over the same table and models as the k = 32 job."""
    start = time.perf_counter()
    glms._peer(ctx.spark, glms.source_plan(spec), root / "peer_10m")
    seconds = time.perf_counter() - start
    print(f"   peer k={KS[-1]}: {seconds:.2f} s", flush=True)
    return seconds
