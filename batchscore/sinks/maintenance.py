"""Housekeeping of the Delta tables the sink writes: vacuum, optimize, orphan listing.

All of it runs in the driver process through delta-rs, without Spark.

- `vacuum` removes files the current version does not reference, once they are older than the
  retention period, but only files batchscore provably wrote (sinks/ownership.py): files the
  Delta log removed (delta-rs' "lite" vacuum), and unreferenced files with the writer's marker
  (files of runs that died before committing) or, written before the markers existed, with the
  old writer's name in a partition folder of the table. Any other unreferenced file is foreign:
  reported, never deleted (a full delta-rs vacuum would delete a `keep.csv` a user left there).
  Staging folders of Spark-written writes whose driver died mid-write go too, past the
  retention.
- `optimize` compacts small files with delta-rs `optimize.compact`: one commit that removes the
  small files and adds bigger ones with the same rows (a data-change-free rewrite, so app
  transactions, i.e. the idempotency of committed runs, are kept).
- `orphan_files` lists data files on disk that the current version does not reference (whoever
  wrote them).

No DeltaTable handle outlives a call (see sinks/storage.py's note on delta-rs #2184).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.transaction import CommitProperties

from batchscore.errors import SinkError, first_line
from batchscore.sinks.ownership import (
    STAGING_DIR,
    delete_files,
    describe,
    list_markers,
    remove_markers,
    table_files,
    written_by_project,
)
from batchscore.sinks.schema import check_table_features, table_partition_columns
from batchscore.sinks.storage import delta_table, filesystem, normalize_path, open_table

DEFAULT_RETAIN_HOURS = 168
"""Delta's default `delta.deletedFileRetentionDuration` (7 days)."""


@dataclass(frozen=True)
class VacuumResult:
    """What vacuum did: the files deleted (or, with dry_run, that would be deleted), and the
    unreferenced files it left alone because batchscore did not write them."""

    path: str
    files: tuple[str, ...]
    dry_run: bool
    retain_hours: int
    version: int
    foreign: tuple[str, ...] = ()
    """Unreferenced files batchscore cannot attribute to itself: listed, never deleted."""

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        text = (
            f"vacuum {self.path}: {verb} {len(self.files)} unreferenced file(s) older than "
            f"{self.retain_hours} h (table version {self.version})"
        )
        if self.foreign:
            text += f"; left {len(self.foreign)} foreign file(s) untouched"
        return text

    def warning(self) -> str:
        """One line about the foreign files ("" when there are none)."""
        if not self.foreign:
            return ""
        return (
            f"{len(self.foreign)} file(s) in {self.path} were not written by batchscore "
            f"({describe(list(self.foreign))}); vacuum left them in place. Move them out of the "
            "table's folder, which should hold only the table."
        )


@dataclass(frozen=True)
class OptimizeResult:
    """What optimize did: files before/after, files added/removed and the versions."""

    path: str
    files_before: int
    files_after: int
    files_added: int
    files_removed: int
    version_before: int
    version_after: int

    @property
    def committed(self) -> bool:
        return self.version_after != self.version_before

    def summary(self) -> str:
        if not self.committed:
            return (
                f"optimize {self.path}: nothing to compact ({self.files_before} file(s), "
                f"table version {self.version_before})"
            )
        return (
            f"optimize {self.path}: {self.files_before} -> {self.files_after} file(s) "
            f"(removed {self.files_removed}, added {self.files_added}); table version "
            f"{self.version_before} -> {self.version_after}"
        )


def live_files(path: str | os.PathLike[str], *, version: int | None = None) -> set[str]:
    """Relative (decoded) paths of the data files the version references."""
    table_path = normalize_path(path)
    table = open_table(table_path, version=version)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    return {urllib.parse.unquote(str(a["path"])) for a in actions}


def data_files_on_disk(path: str | os.PathLike[str]) -> set[str]:
    """Relative paths of every Parquet data file under the table (outside `_delta_log` and other
    hidden `_`/`.` folders)."""
    table_path = normalize_path(path)
    fs, base = filesystem(table_path)
    found: set[str] = set()
    selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) :].lstrip("/")
        if any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue
        if rel.endswith(".parquet"):
            found.add(rel)
    return found


def orphan_files(path: str | os.PathLike[str]) -> set[str]:
    """Data files on disk that the table's latest version does not reference."""
    return data_files_on_disk(path) - live_files(path)


def vacuum(
    path: str | os.PathLike[str],
    *,
    retain_hours: int = DEFAULT_RETAIN_HOURS,
    dry_run: bool = False,
    enforce_retention: bool = True,
) -> VacuumResult:
    """Delete files the latest version does not reference, older than `retain_hours`, that
    batchscore provably wrote; list the other unreferenced files as `foreign` (see the module
    docstring and sinks/ownership.py).

    enforce_retention=False allows a retention below the table's own minimum (by default 168 h):
    needed for `retain_hours=0`. That is only safe when no writer is running on the table: a
    running job's not-yet-committed files are unreferenced too.
    """
    table_path = normalize_path(path)
    if retain_hours < 0:
        raise SinkError(
            f"Delta table {table_path}: retain_hours must be >= 0, got {retain_hours}; pass a "
            "number of hours."
        )
    table = open_table(table_path)
    check_table_features(table, path=table_path, for_write=True)
    parts = table_partition_columns(table)
    live = {urllib.parse.unquote(str(a["path"])) for a in _add_actions(table)}
    # Files the log removed (tombstones): the table's own; this also checks the retention.
    removed = set(_delta_vacuum(table, table_path, retain_hours, enforce_retention, dry_run=True))
    del table
    cutoff_ns = time.time_ns() - int(retain_hours) * 3600 * 10**9
    on_disk = table_files(table_path, parts)
    markers = list_markers(table_path)
    ours: list[str] = []
    foreign: list[str] = []
    for rel, mtime_ns in sorted(on_disk.items()):
        if rel in live or rel in removed:
            continue
        if written_by_project(rel, markers, parts):
            if mtime_ns <= cutoff_ns:
                ours.append(rel)
        else:
            foreign.append(rel)
    if dry_run:
        files = removed | set(ours)
    else:
        files = set(
            _delta_vacuum(
                delta_table(table_path, fresh=True),  # vacuum commits through it
                table_path,
                retain_hours,
                enforce_retention,
                dry_run=False,
            )
        )
        delete_files(table_path, ours)
        files |= set(ours)
        _remove_stale_markers(table_path, markers, on_disk.keys() - files, cutoff_ns)
    files |= set(_stale_staging(table_path, cutoff_ns, dry_run=dry_run))
    version = int(delta_table(table_path).version())
    return VacuumResult(
        table_path, tuple(sorted(files)), dry_run, int(retain_hours), version, tuple(foreign)
    )


def _add_actions(table: DeltaTable) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    return rows


def _delta_vacuum(
    table: DeltaTable, path: str, retain_hours: int, enforce_retention: bool, *, dry_run: bool
) -> list[str]:
    """delta-rs' lite vacuum (the files the log removed), as paths relative to the table."""
    try:
        deleted = table.vacuum(
            retention_hours=int(retain_hours),
            dry_run=dry_run,
            enforce_retention_duration=enforce_retention,
            full=False,
            commit_properties=CommitProperties(
                custom_metadata={"batchscore.maintenance": "vacuum"}
            ),
        )
    except Exception as exc:
        text = first_line(str(exc))
        hint = (
            " Pass a longer retention, or allow a short one explicitly "
            "(enforce_retention=False / --no-enforce-retention) when no job writes to the table."
            if "retention" in text.lower()
            else " Check the table and rerun."
        )
        raise SinkError(f"Delta table {path}: vacuum failed ({text}).{hint}") from None
    base_prefix = path.rstrip("/") + "/"
    return [urllib.parse.unquote(f).removeprefix(base_prefix) for f in deleted]


def _stale_staging(path: str, cutoff_ns: int, *, dry_run: bool) -> list[str]:
    """The files of staging folders (sinks/spark_writer.py) older than the retention: a write
    removes its own when it ends, so these are of drivers that died mid-write. Deleted unless
    `dry_run`."""
    fs, base = filesystem(path)
    selector = pafs.FileSelector(f"{base}/{STAGING_DIR}", allow_not_found=True)
    stale: list[str] = []
    for folder in fs.get_file_info(selector):
        if folder.type != pafs.FileType.Directory or (folder.mtime_ns or 0) > cutoff_ns:
            continue
        inside = pafs.FileSelector(folder.path, recursive=True)
        files = [i for i in fs.get_file_info(inside) if i.type == pafs.FileType.File]
        if any((i.mtime_ns or 0) > cutoff_ns for i in files):
            continue  # a write still adding files
        stale += [i.path[len(base) :].lstrip("/") for i in files]
        if not dry_run:
            fs.delete_dir(folder.path)
    return stale


def _remove_stale_markers(
    path: str, markers: dict[str, int], present: Iterable[str], cutoff_ns: int
) -> None:
    """Delete the markers, older than the retention, of data files that are gone (deleted by
    this vacuum, an abort or an earlier cleanup). A marker younger than that may belong to a
    file a running write is about to create, and one whose file reappeared stays."""
    fs, base = filesystem(path)
    still = set(present)
    stale = []
    for rel, mtime_ns in markers.items():
        if rel in still or mtime_ns > cutoff_ns:
            continue
        if fs.get_file_info(f"{base}/{rel}").type == pafs.FileType.NotFound:
            stale.append(rel)
    remove_markers(fs, base, stale)


def optimize(
    path: str | os.PathLike[str],
    *,
    target_size_mb: float | None = None,
) -> OptimizeResult:
    """Compact small files (delta-rs `optimize.compact`) in one commit; rows are unchanged.

    target_size_mb: the size of the files to produce (default: delta-rs' 100 MB, or the table's
    `delta.targetFileSize`).
    """
    table_path = normalize_path(path)
    if target_size_mb is not None and target_size_mb <= 0:
        raise SinkError(
            f"Delta table {table_path}: target size must be > 0 MB, got {target_size_mb}."
        )
    table = open_table(table_path, fresh=True)  # optimize commits through it
    check_table_features(table, path=table_path, for_write=True)
    before = len(table.file_uris())
    version_before = int(table.version())
    try:
        metrics = table.optimize.compact(
            target_size=None if target_size_mb is None else int(target_size_mb * 1024 * 1024),
            commit_properties=CommitProperties(
                custom_metadata={"batchscore.maintenance": "optimize"}
            ),
        )
    except Exception as exc:
        raise SinkError(
            f"Delta table {table_path}: optimize failed ({first_line(str(exc))}); if another "
            "job committed meanwhile, rerun optimize."
        ) from None
    del table
    after_table = delta_table(table_path)
    result = OptimizeResult(
        path=table_path,
        files_before=before,
        files_after=len(after_table.file_uris()),
        files_added=int(metrics.get("numFilesAdded", 0)),
        files_removed=int(metrics.get("numFilesRemoved", 0)),
        version_before=version_before,
        version_after=int(after_table.version()),
    )
    return result
