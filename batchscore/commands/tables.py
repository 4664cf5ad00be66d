"""Table housekeeping and serving commands: `vacuum`, `optimize`, `sql-server`.

batchscore vacuum PATH [--retain-hours H] [--dry-run] [--no-enforce-retention]
batchscore optimize PATH [--target-size MB]
batchscore sql-server --table NAME=PATH ... [--port P] [--poll-seconds S] [--master URL]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from batchscore.errors import SpecError

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> dict[str, Handler]:
    """Add the subparsers to `sub` (argparse sub-parsers) and return the handlers by name."""
    from batchscore.sinks.maintenance import DEFAULT_RETAIN_HOURS

    vacuum = sub.add_parser(
        "vacuum",
        help="delete files batchscore wrote that the table no longer references (dead runs, "
        "overwrites); other files are listed as foreign, never deleted",
    )
    vacuum.add_argument("path")
    vacuum.add_argument(
        "--retain-hours",
        type=int,
        default=DEFAULT_RETAIN_HOURS,
        help=f"keep unreferenced files younger than this (default {DEFAULT_RETAIN_HOURS})",
    )
    vacuum.add_argument("--dry-run", action="store_true", help="list, do not delete")
    vacuum.add_argument(
        "--no-enforce-retention",
        dest="enforce_retention",
        action="store_false",
        help="allow a retention below the table's minimum (168 h), e.g. 0; only safe when no "
        "job is writing to the table",
    )
    optimize = sub.add_parser("optimize", help="compact small files into bigger ones (one commit)")
    optimize.add_argument("path")
    optimize.add_argument(
        "--target-size", type=float, default=None, metavar="MB", help="file size to aim for"
    )
    server = sub.add_parser(
        "sql-server", help="serve Delta tables over JDBC (Spark Thrift server) until SIGTERM"
    )
    server.add_argument("--table", action="append", default=[], metavar="NAME=PATH")
    server.add_argument("--port", type=int, default=10000)
    server.add_argument(
        "--poll-seconds",
        type=float,
        default=3.0,
        help="how often to check for new table versions (default 3)",
    )
    server.add_argument("--master", help="Spark master URL (default local[*])")
    return {"vacuum": _cmd_vacuum, "optimize": _cmd_optimize, "sql-server": _cmd_sql_server}


def _cmd_vacuum(args: argparse.Namespace) -> int:
    from batchscore.sinks.maintenance import vacuum

    result = vacuum(
        args.path,
        retain_hours=args.retain_hours,
        dry_run=args.dry_run,
        enforce_retention=args.enforce_retention,
    )
    verb = "would delete" if result.dry_run else "deleted"
    if result.files or result.dry_run:
        print(f"{verb} (batchscore's, unreferenced, older than {result.retain_hours} h):")
        for name in result.files or ["(none)"]:
            print(f"  {name}")
    if result.foreign or result.dry_run:
        print("foreign (unreferenced, not written by batchscore; never deleted):")
        for name in result.foreign or ["(none)"]:
            print(f"  {name}")
    print(result.summary())
    if result.foreign:
        print(f"warning: {result.warning()}", file=sys.stderr)
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    from batchscore.sinks.maintenance import optimize

    print(optimize(args.path, target_size_mb=args.target_size).summary())
    return 0


def _cmd_sql_server(args: argparse.Namespace) -> int:
    from batchscore.sinks.sql_server import serve

    tables: dict[str, str] = {}
    for value in args.table:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SpecError(f"--table '{value}' must look like NAME=PATH.")
        tables[name] = path
    return serve(tables, port=args.port, master=args.master, poll_seconds=args.poll_seconds)
