"""`batchscore evaluate`: committed predictions against the true labels, once they arrive.

batchscore evaluate SPEC --labels TABLE --on ID_COLS --label-column C [--from D --to D]
                    [--model M] [--master URL]

Prints one line per run date (labelled rows, unmatched labels, each model's main metric), one
verdict per challenger and date, and writes the metrics to the spec's monitoring table (kind
`evaluation`, docs/health.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> dict[str, Handler]:
    evaluate = sub.add_parser(
        "evaluate",
        help="measure committed predictions against true labels (AUC, log loss, RMSE, ...)",
    )
    evaluate.add_argument("spec", help="the job spec whose predictions to evaluate")
    evaluate.add_argument("--labels", required=True, help="labels table (Delta or Parquet)")
    evaluate.add_argument(
        "--on", required=True, help="id columns the labels join the predictions on: a,b"
    )
    evaluate.add_argument(
        "--label-column", dest="label_column", required=True, help="the true label's column"
    )
    evaluate.add_argument("--from", dest="date_from", metavar="D1", help="first run date")
    evaluate.add_argument("--to", dest="date_to", metavar="D2", help="last run date, included")
    evaluate.add_argument(
        "--model",
        action="append",
        default=[],
        help="only this model, with its champion and challengers (repeatable)",
    )
    evaluate.add_argument("--master", help="Spark master (default local[*] or spark-submit's)")
    return {"evaluate": _cmd_evaluate}


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from batchscore.jobs.evaluate import prepare, run_prepared
    from batchscore.spec.load import load_spec

    spec = load_spec(args.spec)
    prepared = prepare(
        spec,
        labels=args.labels,
        on=args.on,
        label_column=args.label_column,
        start=args.date_from,
        end=args.date_to,
        models=[m for value in args.model for m in value.split(",") if m] or None,
    )
    from batchscore.physical.session import get_spark

    spark = get_spark(args.master) if prepared.runs else None
    if spark is None:
        print(f"No committed run of '{spec.name}' to evaluate in the range asked.")
        return 0
    for line in run_prepared(spark, prepared).lines():
        print(line)
    return 0
