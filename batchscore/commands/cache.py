"""The compiled-tree cache: `batchscore cache info` and `batchscore cache clear`.

Compiled tree models are cached on the driver (kernels.trees.compiled.cache): the folder is
BATCHSCORE_CACHE_DIR, else $XDG_CACHE_HOME/batchscore, else ~/.cache/batchscore.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any) -> dict[str, Handler]:
    cache = sub.add_parser("cache", help="show or clear the compiled-tree cache")
    cache.add_argument("action", choices=("info", "clear"))
    return {"cache": _cmd_cache}


def _cmd_cache(args: argparse.Namespace) -> int:
    from batchscore.kernels.trees.compiled import cache
    from batchscore.kernels.trees.compiled.toolchain import find_compiler

    folder = cache.trees_dir()
    if args.action == "clear":
        removed = cache.clear()
        print(f"Removed {removed} file(s) from {folder}.")
        return 0
    libraries = sorted(folder.glob("*.so")) if folder.is_dir() else []
    size = sum(p.stat().st_size for p in libraries)
    compiler = find_compiler()
    print(f"Compiled-tree cache: {folder}")
    print(f"  {len(libraries)} compiled model(s), {size / 1e6:,.1f} MB")
    print(f"  compiler: {compiler.version if compiler else 'none found (trees not compiled)'}")
    return 0
