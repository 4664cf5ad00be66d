"""The driver's cache: `batchscore cache info` and `batchscore cache clear`.

Compiled tree models (kernels.trees.compiled.cache) and the dimension snapshots whose keys were
found unique (plan.checked_keys) are cached on the driver: the folder is BATCHSCORE_CACHE_DIR,
else $XDG_CACHE_HOME/batchscore, else ~/.cache/batchscore.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> dict[str, Handler]:
    cache = sub.add_parser(
        "cache", help="show or clear the driver's cache (compiled trees, checked dimension keys)"
    )
    cache.add_argument("action", choices=("info", "clear"))
    return {"cache": _cmd_cache}


def _cmd_cache(args: argparse.Namespace) -> int:
    from batchscore.kernels.trees.compiled import cache
    from batchscore.kernels.trees.compiled.toolchain import find_compiler
    from batchscore.plan import checked_keys

    folder = cache.trees_dir()
    if args.action == "clear":
        removed = cache.clear()
        print(f"Removed {removed} file(s) from {folder}.")
        forgotten = checked_keys.forget_all()
        print(
            f"Removed {forgotten} checked dimension snapshot(s) from {checked_keys.checks_dir()}."
        )
        return 0
    libraries = sorted(folder.glob("*.so")) if folder.is_dir() else []
    size = sum(p.stat().st_size for p in libraries)
    compiler = find_compiler()
    print(f"Compiled-tree cache: {folder}")
    print(f"  {len(libraries)} compiled model(s), {size / 1e6:,.1f} MB")
    print(f"  compiler: {compiler.version if compiler else 'none found (trees not compiled)'}")
    checks = checked_keys.checks_dir()
    known = sum(1 for _ in checks.iterdir()) if checks.is_dir() else 0
    print(f"Checked dimension snapshots: {checks} ({known}; their keys are not checked again)")
    return 0
