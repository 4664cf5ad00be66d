"""`batchscore report`: the monitoring report of a job as one static HTML file.

batchscore report --monitoring PATH --job J [--model M] [--last N] [--predictions PATH]
    --out report.html

The work is in batchscore/monitor/report.py (no Spark: it reads the monitoring table with
delta-rs), so a scheduler can publish the page after every run without starting a JVM.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> dict[str, Handler]:
    """Add the `report` subparser to `sub` (argparse sub-parsers) and return its handler."""
    report = sub.add_parser(
        "report",
        help="write a static HTML report of a job's monitoring: drift over time, histograms, "
        "predictions, row counts, the latest run's alerts and champion vs challenger "
        "comparisons (one file, opens offline)",
    )
    report.add_argument("--monitoring", required=True, metavar="PATH", help="monitoring table")
    report.add_argument("--job", required=True, help="the job's name in the monitoring table")
    report.add_argument("--model", help="only this model (default: every model of the job)")
    report.add_argument(
        "--last", type=int, default=30, metavar="N", help="the last N runs (default 30)"
    )
    report.add_argument(
        "--predictions",
        metavar="PATH",
        help="the job's prediction table (long layout): adds a scatter of each challenger's "
        "scores against its champion's in the latest run",
    )
    report.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    return {"report": _cmd_report}


def _cmd_report(args: argparse.Namespace) -> int:
    from batchscore.monitor.report import write_report

    summary = write_report(
        args.monitoring,
        args.job,
        args.out,
        model=args.model,
        last=args.last,
        predictions=args.predictions,
    )
    print(
        f"Wrote {summary.path}: {summary.runs} run(s), {summary.alerts} alert(s) in the latest "
        f"run, model(s) {', '.join(summary.models)}."
    )
    return 0
