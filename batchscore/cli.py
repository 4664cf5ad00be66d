"""`batchscore` command line: parse arguments, call the library, exit with a clear code.

Exit codes: 0 success (also: already committed, or nothing to score); 1 a runtime step failed;
2 bad spec, model or input data; 4 the output table refused the write. Failures print one line
starting with "error:" to stderr, never a traceback (set BATCHSCORE_DEBUG=1 for one). `run`
also shows the Spark stages' progress on stderr (jobs/progress.py) unless --quiet. The user
contract of every command is docs/contract.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from batchscore.commands import COMMAND_MODULES
from batchscore.errors import BatchScoreError, SpecError, first_line

REMOTE_HELP = (
    "Spark Connect server URL, sc://HOST:PORT (default $BATCHSCORE_REMOTE, else $SPARK_REMOTE; "
    "docs/connect.md)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchscore", description="Plan, score and commit batch predictions on Spark."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="plan and run a job spec, commit predictions to Delta")
    run.add_argument("spec")
    run.add_argument("--run-date", dest="run_date")
    run.add_argument("--master", help="Spark master URL (default local[*])")
    run.add_argument("--remote", help=REMOTE_HELP, metavar="URL")
    run.add_argument(
        "--force", action="store_true", help="score again even if this run date was committed"
    )
    run.add_argument(
        "--profile",
        action="store_true",
        help="print where the time went: driver phases and executor stages (scan + joins, "
        "feature assembly, each model's scoring, output columns, Parquet write)",
    )
    run.add_argument(
        "--executor-timeout",
        dest="executor_timeout",
        type=float,
        metavar="SECONDS",
        help="seconds to get executors that run Python before the first job, else exit 1 "
        "(default $BATCHSCORE_EXECUTOR_TIMEOUT, else 120)",
    )
    run.add_argument(
        "--summary-json",
        dest="summary_json",
        metavar="PATH",
        help="also write the run's result as JSON (rows, quarantined, null predictions by "
        "model and reason, table version, seconds)",
    )
    run.add_argument(
        "--from", dest="date_from", metavar="D1", help="backfill: first run date (with --to)"
    )
    run.add_argument("--to", dest="date_to", metavar="D2", help="backfill: last run date, included")
    run.add_argument(
        "--only-new",
        action="store_true",
        help="only dates with source partitions that are not yet committed with the current "
        "models (see batchscore/jobs/backfill.py)",
    )
    run.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr (bars on a terminal, one line per Spark stage otherwise)",
    )
    explain = sub.add_parser("explain", help="print the optimized plan with its decisions")
    explain.add_argument("spec")
    explain.add_argument("--run-date", dest="run_date")
    sql = sub.add_parser("sql", help="run Spark SQL over Delta tables registered as views")
    sql.add_argument("query")
    sql.add_argument("--table", action="append", default=[], metavar="NAME=PATH")
    sql.add_argument("--as-of", action="append", default=[], metavar="NAME=VERSION")
    sql.add_argument("--limit", type=int, default=100, help="rows to print (default 100)")
    sql.add_argument("--master")
    sql.add_argument("--remote", help=REMOTE_HELP, metavar="URL")
    history = sub.add_parser("history", help="a table's commits with their lineage")
    history.add_argument("path")
    history.add_argument("--json", action="store_true", help="print JSON lines")
    for name in COMMAND_MODULES:
        COMMANDS.update(importlib.import_module(name).register(sub))
    return parser


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SpecError(f"{what} '{value}' must look like NAME=VALUE.")
        out[name] = rest
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    import batchscore as bs
    from batchscore.jobs.progress import SparkProgress

    if args.date_from or args.date_to or args.only_new:
        return _cmd_run_range(args)
    with SparkProgress(enabled=not args.quiet):
        result = bs.run(
            args.spec,
            run_date=args.run_date,
            master=args.master,
            force=args.force,
            profile=args.profile,
            executor_timeout=args.executor_timeout,
            remote=args.remote,
        )
    print(result.summary())
    if args.summary_json:
        _write_summary_json(args.summary_json, result.to_json())
    return result.exit_code


def _write_summary_json(path: str, body: dict[str, Any]) -> None:
    from pathlib import Path

    from batchscore.errors import StepError

    try:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(body, indent=2, default=str) + "\n")
    except OSError as exc:
        raise StepError(
            f"--summary-json {path}: cannot write it ({exc.strerror or exc}); the run itself "
            "committed; pass a writable path."
        ) from None


def _cmd_run_range(args: argparse.Namespace) -> int:
    from batchscore.api import load_spec
    from batchscore.jobs.backfill import run_range
    from batchscore.jobs.progress import SparkProgress

    if args.run_date and (args.date_from or args.date_to):
        raise SpecError("--run-date does not go with --from/--to; pass one or the other.")
    if args.force:
        raise SpecError("--force does not go with --from/--to/--only-new; run dates one by one.")
    if args.executor_timeout is not None:
        from batchscore.physical.session import EXECUTOR_TIMEOUT_ENV

        os.environ[EXECUTOR_TIMEOUT_ENV] = str(args.executor_timeout)
    if args.remote is not None:
        from batchscore.physical.connect import REMOTE_ENV

        os.environ[REMOTE_ENV] = args.remote  # every date's session: physical/session.py
    spec = load_spec(args.spec, run_date=args.run_date)
    start = args.run_date or args.date_from
    end = args.run_date or args.date_to
    flush = lambda line: print(line, flush=True)  # noqa: E731
    with SparkProgress(enabled=not args.quiet):
        run_range(
            spec, start=start, end=end, only_new=args.only_new, master=args.master, echo=flush
        )
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import batchscore as bs

    print(bs.explain(args.spec, run_date=args.run_date))
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    import batchscore as bs

    tables = _pairs(args.table, "--table")
    as_of = {k: int(v) for k, v in _pairs(args.as_of, "--as-of").items()}
    spark = bs.spark_session(args.master, remote=args.remote)
    df = bs.sql(args.query, tables=tables, spark=spark, as_of=as_of)
    rows = df.limit(args.limit).collect()
    print(format_table(df.columns, [list(r) for r in rows]))
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    import batchscore as bs

    commits = bs.history(args.path)
    for commit in commits:
        print(json.dumps(commit, default=str) if args.json else _history_line(commit))
    return 0


def _history_line(commit: dict[str, Any]) -> str:
    custom = commit.get("metadata") or {}
    meta = {
        k.removeprefix("batchscore."): v for k, v in custom.items() if k.startswith("batchscore.")
    }
    stamp = commit.get("timestamp")
    when = (
        datetime.fromtimestamp(stamp / 1000, UTC).isoformat() if isinstance(stamp, int) else stamp
    )
    head = f"v{commit.get('version')}  {when}  {commit.get('operation', '')}"
    if not meta:
        return head
    models = meta.get("models") or {}
    if isinstance(models, str):
        models = json.loads(models)
    inputs = meta.get("inputs") or {}
    if isinstance(inputs, str):
        inputs = json.loads(inputs)
    model_text = ", ".join(
        f"{n}@{m.get('version')} sha256:{str(m.get('sha256'))[:12]}" for n, m in models.items()
    )
    input_text = ", ".join(
        f"{n}@v{i.get('version')}" if i.get("version") is not None else n for n, i in inputs.items()
    )
    return (
        f"{head}  job={meta.get('job')} run_date={meta.get('run_date')} "
        f"run_id={meta.get('run_id')} "
        f"spec={str(meta.get('spec_hash'))[:12]}  models[{model_text}]  inputs[{input_text}]"
    )


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text grid that reads well in a terminal and in a scheduler log."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, list):
            return "[" + ", ".join(cell(v) for v in value) + "]"
        return "NULL" if value is None else str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [
        line,
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        line,
    ]
    out += [
        "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in text
    ]
    out += [line, f"({len(rows)} row{'s' if len(rows) != 1 else ''})"]
    return "\n".join(out)


Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {
    "run": _cmd_run,
    "explain": _cmd_explain,
    "sql": _cmd_sql,
    "history": _cmd_history,
}


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (tests call this; `main` also exits)."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BatchScoreError as exc:
        _report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from batchscore.errors import StepError

        wrapped = _unwrap(exc)
        if wrapped is not None:
            _report(wrapped)
            return wrapped.exit_code
        _report(
            StepError(f"Step '{args.command}' failed: {type(exc).__name__}: {first_line(exc)}"),
            exc,
        )
        return 1


def _unwrap(exc: BaseException) -> BatchScoreError | None:
    try:
        from batchscore.sinks.spark_errors import unwrap_spark_error
    except ImportError:
        return None
    return unwrap_spark_error(exc)


def _report(error: BaseException, cause: BaseException | None = None) -> None:
    from batchscore.sinks.storage_config import redact  # no storage secret is ever printed

    print(redact(f"error: {error}"), file=sys.stderr)
    if os.environ.get("BATCHSCORE_DEBUG"):
        print(redact("".join(traceback.format_exception(cause or error))), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point. Leaves without the interpreter's teardown (see `hard_exit`)."""
    hard_exit(run_cli(argv))


def hard_exit(code: int) -> None:
    """Stop Spark, flush, and `os._exit(code)`.

    A process that used delta-rs/pyarrow scans can abort in native teardown at exit (exit 134,
    delta-rs #2184, arrow #34314) after the job succeeded; a scheduler would read that as a
    failure. Skipping the teardown makes the exit code the job's own, every time.
    """
    try:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
    except Exception:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
