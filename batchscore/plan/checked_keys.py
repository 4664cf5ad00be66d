"""Dimension snapshots whose join keys were found unique, remembered on the driver.

A duplicate key in a dimension would multiply the fact rows it joins, so a run checks every
joined dimension with a small Spark aggregation before it scores (physical.lower). On a
daily job over unchanged dimensions that check was most of the driver's time before the
scoring job (two dimensions: 0.4-0.8 s of a 3.6-6 s run, measured on the tree bench's job).
Its answer depends only on the rows the dimension's scan reads and on the key columns, so once
a snapshot is found unique it is remembered, and a later run reading the same snapshot skips
the aggregation.

The check reads the dimension's own scan (`keyed_scan`): the join keys are its columns, and
what sits between that scan and the join keeps its rows one for one (a factorized model's
partial scores score each row; a snowflake's lower dimensions are left-joined on keys their
own checks found unique, and those checks run first). So neither the models nor the lower
tables change the answer, and the memo key hashes only the join's table and keys, that scan
as planned (table, path, columns, partition filters, predicate, Delta version), and what
identifies the table's data (`TableInfo.snapshot_key`: a Delta table's id, version and live
files, a Parquet folder's files with sizes and modification times). Only "unique" is
remembered; a duplicate fails the run and is found again next time.

Entries are empty files in `<cache>/checks/` (the driver's cache folder: BATCHSCORE_CACHE_DIR,
else $XDG_CACHE_HOME/batchscore, else ~/.cache/batchscore); `batchscore cache clear` removes
them, and an unwritable cache only means the next run checks again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from batchscore.kernels.trees.compiled.cache import cache_root
from batchscore.plan.nodes import Join, LogicalPlan, Partial, Scan
from batchscore.sinks.storage import write_bytes

MEMO_VERSION = "2"
MAX_ENTRIES = 2_000
"""Past this many entries the oldest half is removed (each is an empty file; a removed entry
only costs one check)."""


def checks_dir() -> Path:
    return cache_root() / "checks"


def memo_key(plan: LogicalPlan, join: Join) -> str:
    """The key of `join`'s dimension snapshot (see the module doc)."""
    scan = keyed_scan(join)
    text = repr(
        (MEMO_VERSION, join.table, join.on, repr(scan), plan.tables[scan.table].snapshot_key)
    )
    return hashlib.sha256(text.encode()).hexdigest()


def keyed_scan(join: Join) -> Scan:
    """The scan of the table whose key columns `join` matches: the root table of its right
    subtree, under any partial scores and lower joins."""
    node = join.right
    while not isinstance(node, Scan):
        node = node.child if isinstance(node, Partial) else node.left
    return node


def already_checked(key: str) -> bool:
    return (checks_dir() / key).is_file()


def remember(key: str) -> None:
    try:
        write_bytes(checks_dir() / key, b"")
        _prune(checks_dir())
    except OSError:
        pass  # an unwritable cache: the next run checks again


def _prune(folder: Path) -> None:
    entries = list(folder.iterdir())
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda p: p.stat().st_mtime_ns)
    for path in entries[: len(entries) - MAX_ENTRIES // 2]:
        path.unlink(missing_ok=True)


def forget(key: str) -> None:
    """The next run reading this snapshot checks its keys again."""
    (checks_dir() / key).unlink(missing_ok=True)


def forget_all() -> int:
    """Remove every remembered check; the number of entries removed."""
    folder = checks_dir()
    removed = 0
    for path in folder.iterdir() if folder.is_dir() else ():
        try:
            path.unlink()
            removed += 1
        except OSError:
            continue
    return removed
