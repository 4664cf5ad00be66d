"""Extra CLI command groups, one module each, registered in COMMAND_MODULES.

Each module exposes `register(sub: argparse._SubParsersAction) -> dict[str, Handler]`: it adds
its subparsers and returns the handlers by command name. `batchscore.cli` stays the one place
that maps errors to exit codes.
"""

from __future__ import annotations

COMMAND_MODULES: tuple[str, ...] = (
    "batchscore.commands.tables",
    "batchscore.commands.models",
    "batchscore.commands.cache",
    "batchscore.commands.report",
    "batchscore.commands.profile",
    "batchscore.commands.evaluate",
)
