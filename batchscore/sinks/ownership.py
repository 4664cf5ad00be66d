"""Which files under a table's folder batchscore wrote, and where it may create a table.

Two rules keep a bad path from costing anybody data:

1. **A table is only created in a folder batchscore owns.** Before a write creates a Delta
   table, `check_table_folder` looks at the folder: missing, empty, or holding only files
   batchscore itself leaves behind (see `project_file`) is fine; anything else is refused with
   a SinkError (exit 4) naming the folder, up to three of the files and the fix. The jobs also
   refuse an output (or quarantine) path that is, lies inside, or contains one of the spec's
   input tables, symlinks resolved (`check_apart`).
2. **Vacuum deletes only what batchscore provably wrote.** Every data file the writer creates
   gets a marker first: an empty file at `_batchscore/written/<relative path>.written`, made
   BEFORE the data file is opened, so a run killed at any point leaves no data file without
   its marker, and every file has a marker of its own (executors writing concurrently never
   share one). A file the table does not reference is the project's when it has its marker, or
   (files of versions before the markers) when it is named like the old writer named its files
   (`part-<16 hex>-<32 hex>.snappy.parquet`) AND lies in a partition folder of the table's own
   partition columns (the root for an unpartitioned table). Everything else is foreign: listed,
   never deleted. Files the Delta log removed (tombstones) are the table's by the log itself.

Markers stay in step with their files: `delete_files`, the one way the sink deletes data files,
removes a file's marker after the file.

`_batchscore/` is hidden to Delta readers and to vacuum (`_`-prefixed), like `_delta_log/`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Container, Iterable, Mapping, Sequence

import pyarrow.fs as pafs

from batchscore.errors import SinkError, first_line
from batchscore.sinks.storage import (
    delete_and_prune,
    filesystem,
    is_delta_table,
    normalize_path,
    partition_dir,
)
from batchscore.sinks.transform import TASKS_DIR

PROJECT_DIR = "_batchscore"
MARKERS_DIR = f"{PROJECT_DIR}/written"
STAGING_DIR = f"{PROJECT_DIR}/staging"
"""Where Spark's own Parquet writer puts a write's files before they move into the table
(sinks/spark_writer.py): `<STAGING_DIR>/<write id>/...`, removed when the write ends."""
MARKER_SUFFIX = ".written"
SHOWN = 3
"""How many foreign files an error or warning names."""

DATA_FILE = re.compile(r"^part-[A-Za-z0-9_-]+-[0-9a-f]{32}\.snappy\.parquet$")
"""How the writer names a data file: part-<write id>-<uuid4 hex>.snappy.parquet."""
LEGACY_FILE = re.compile(r"^part-[0-9a-f]{16}-[0-9a-f]{32}\.snappy\.parquet$")
"""The same name with a generated write id: what versions without markers wrote."""
WRITE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TASK_FILE = re.compile(rf"^{re.escape(TASKS_DIR)}/[A-Za-z0-9_-]+\.pkl$")
_PENDING_COMMIT = re.compile(r"^_delta_log/_commit_[0-9A-Za-z-]+\.json\.tmp$")
_PROFILE_FILE = re.compile(rf"^{PROJECT_DIR}/profile/[0-9A-Za-z_-]+/[0-9a-f]{{32}}\.json$")
"""A task's stage times of a `--profile` run (physical.profile) that died before collecting."""
_STAGED_FILE = re.compile(rf"^{re.escape(STAGING_DIR)}/[A-Za-z0-9_-]+/.+$")
"""Anything Spark's writer left in a staging folder of a driver that died mid-write."""
_NULLS_FILE = re.compile(
    rf"^{PROJECT_DIR}/(nulls|monitor|rules)/[0-9A-Za-z_-]+/(part-[0-9]+|[0-9a-f]{{32}})\.json$"
)
"""A task's null-prediction counts (physical.null_counts), monitoring accumulators
(physical.monitoring) or validation counts (physical.validation) of a run that died before
collecting."""


# --------------------------------------------------------------------------------------------
# markers (written by executors, read by vacuum and the folder check)


def marker_path(rel: str) -> str:
    """Where the marker of data file `rel` (relative to the table) lies, relative too."""
    return f"{MARKERS_DIR}/{rel}{MARKER_SUFFIX}"


def write_marker(fs: pafs.FileSystem, base: str, rel: str) -> None:
    """Record that batchscore is about to create data file `rel`: call BEFORE creating it."""
    location = f"{base}/{marker_path(rel)}"
    folder = location.rsplit("/", 1)[0]
    for attempt in (1, 2):
        fs.create_dir(folder, recursive=True)
        try:
            with fs.open_output_stream(location):
                return
        except FileNotFoundError:
            # A cleanup removed the (empty) folder between the two calls: make it again.
            if attempt == 2:
                raise


def remove_markers(fs: pafs.FileSystem, base: str, rels: Iterable[str]) -> None:
    """Delete the markers of data files `rels` (already deleted); missing ones are fine. Empty
    folders left under `_batchscore/written` go too (local tables)."""
    delete_and_prune(fs, base, (marker_path(rel) for rel in rels), stop=MARKERS_DIR)


def delete_files(path: str, relative_paths: Iterable[str]) -> None:
    """Delete data files of the table at `path` (normalized); missing files are fine. Empty
    partition folders left behind are removed too (local tables), and so are the files' markers
    (after the file: a file that could not be deleted keeps its marker)."""
    fs, base = filesystem(path)
    gone = delete_and_prune(fs, base, relative_paths)
    remove_markers(fs, base, gone)


def list_markers(path: str) -> dict[str, int]:
    """{data file (relative): marker mtime in ns} for every marker under the table."""
    fs, base = filesystem(path)
    root = f"{base}/{MARKERS_DIR}"
    found: dict[str, int] = {}
    selector = pafs.FileSelector(root, allow_not_found=True, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(MARKER_SUFFIX):
            continue
        rel = info.path[len(root) :].lstrip("/")[: -len(MARKER_SUFFIX)]
        found[rel] = int(info.mtime_ns or 0)
    return found


# --------------------------------------------------------------------------------------------
# attribution


def visible(rel: str, partition_columns: Sequence[str]) -> bool:
    """Whether a file is table content in Delta's eyes: no `_`/`.`-prefixed folder or name on
    its path, except partition folders of `_`-prefixed partition columns (as delta-rs decides)."""
    *folders, name = rel.split("/")
    prefixes = tuple(partition_dir(c, "") for c in partition_columns)
    if name.startswith(("_", ".")):
        return False
    return all(not f.startswith(("_", ".")) or f.startswith(prefixes) for f in folders)


def in_partition_folder(rel: str, partition_columns: Sequence[str]) -> bool:
    """Whether `rel` lies exactly in a partition folder of these columns (the root for none)."""
    folders = rel.split("/")[:-1]
    if len(folders) != len(partition_columns):
        return False
    return all(
        f.startswith(partition_dir(c, "")) for f, c in zip(folders, partition_columns, strict=True)
    )


def written_by_project(rel: str, markers: Container[str], partition_columns: Sequence[str]) -> bool:
    """Whether data file `rel` is provably batchscore's: its marker, or the old naming in a
    partition folder of the table (see the module docstring)."""
    name = rel.rsplit("/", 1)[-1]
    if DATA_FILE.match(name) and rel in markers:
        return True
    return bool(LEGACY_FILE.match(name)) and in_partition_folder(rel, partition_columns)


def table_files(path: str, partition_columns: Sequence[str]) -> dict[str, int]:
    """{relative path: mtime in ns} of every visible file under the table (see `visible`)."""
    fs, base = filesystem(path)
    found: dict[str, int] = {}
    selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) :].lstrip("/")
        if visible(rel, partition_columns):
            found[rel] = int(info.mtime_ns or 0)
    return found


# --------------------------------------------------------------------------------------------
# where a table may be created


def project_file(rel: str, *, exists: bool) -> bool:
    """Whether a file in a folder WITHOUT a Delta table is one batchscore leaves there: a task
    file, staged file or marker under `_batchscore/`, a data file whose marker `exists`, or a
    Delta commit still being written (a `_delta_log/_commit_*.json.tmp`)."""
    if rel.startswith(f"{MARKERS_DIR}/") and rel.endswith(MARKER_SUFFIX):
        return True
    left = (_TASK_FILE, _PENDING_COMMIT, _PROFILE_FILE, _NULLS_FILE, _STAGED_FILE)
    if any(p.match(rel) for p in left):
        return True
    return bool(DATA_FILE.match(rel.rsplit("/", 1)[-1])) and exists


def check_table_folder(path: str | os.PathLike[str], *, label: str = "Delta table") -> None:
    """Raise SinkError unless a Delta table may be created at `path`: the path is a Delta table
    already, does not exist, or is a folder holding no file batchscore did not put there.

    Object-store paths are listed through pyarrow's filesystems; a scheme pyarrow cannot open,
    or a listing that fails there, skips the check (local paths are always checked).
    """
    table_path = normalize_path(path)
    if is_delta_table(table_path):
        return
    remote = "://" in table_path
    try:
        fs, base = filesystem(table_path)
        kind = fs.get_file_info(base).type
        if kind == pafs.FileType.NotFound:
            return
        if kind != pafs.FileType.Directory:
            raise SinkError(
                f"{label} {table_path} is a file, not a folder, so no table can be created "
                "there; point it at an empty or new path."
            )
        foreign = _foreign_files(fs, base, limit=SHOWN + 1)
    except SinkError:
        raise
    except Exception as exc:
        if remote:
            return  # a scheme pyarrow cannot open, or no listing there: not checked
        if not isinstance(exc, OSError):
            raise
        raise SinkError(
            f"{label} {table_path} cannot be listed ({first_line(exc)}); check the path and "
            "its permissions."
        ) from None
    if foreign and any(f.startswith("_delta_log/") for f in foreign) and is_delta_table(table_path):
        return  # another writer created the table meanwhile
    if foreign:
        raise SinkError(
            f"{label} {table_path} is a folder that is not a Delta table and not empty (it "
            f"holds {describe(foreign)}); batchscore creates a table only in a folder it owns "
            "and wrote nothing. Point it at an empty or new path (or move those files away)."
        )


def describe(files: Sequence[str], shown: int = SHOWN) -> str:
    """'a, b, c and more' for up to `shown` file names."""
    names = ", ".join(files[:shown])
    return names + (" and more" if len(files) > shown else "")


def _foreign_files(fs: pafs.FileSystem, base: str, *, limit: int) -> list[str]:
    """Up to `limit` files under `base` that are not batchscore's (breadth-first, sorted)."""
    found: list[str] = []
    pending = [""]
    while pending and len(found) < limit:
        folder = pending.pop(0)
        selector = pafs.FileSelector(f"{base}/{folder}" if folder else base, allow_not_found=True)
        for info in sorted(fs.get_file_info(selector), key=lambda i: i.path):
            rel = info.path[len(base) :].lstrip("/")
            if info.type == pafs.FileType.Directory:
                pending.append(rel)
                continue
            exists = False
            if DATA_FILE.match(info.base_name):
                marker = fs.get_file_info(f"{base}/{marker_path(rel)}")
                exists = marker.type == pafs.FileType.File
            if not project_file(rel, exists=exists):
                found.append(rel)
                if len(found) >= limit:
                    break
    return found


def resolved(path: str) -> str:
    """A table path with `file:` and symlinks resolved (local), for comparing locations."""
    text = normalize_path(path)
    if "://" in text:
        return text.rstrip("/")
    return os.path.realpath(text)


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_apart(label: str, target: str, others: Mapping[str, str], *, harm: str) -> None:
    """Raise SinkError when `target` is, lies inside, or contains one of `others` (what it is,
    e.g. "input table 'sales'" -> its path), symlinks resolved. `harm`: what writing there
    would do, for the message."""
    mine = resolved(target)
    for what, other_path in others.items():
        theirs = resolved(other_path)
        if mine == theirs:
            relation = "is"
        elif _inside(mine, theirs):
            relation = "lies inside"
        elif _inside(theirs, mine):
            relation = "contains"
        else:
            continue
        shown = mine if mine == normalize_path(target) else f"{normalize_path(target)} (= {mine})"
        raise SinkError(
            f"{label} {shown} {relation} {what} ({theirs}); writing there would {harm}, so "
            f"nothing was written. Point {label} at an empty or new path."
        )
