"""Housekeeping of the Delta tables the sink writes: vacuum, optimize, orphan listing.

All of it runs in the driver process through delta-rs, without Spark.

- `vacuum` removes data files the current version does not reference (files of dead or killed
  runs, and files removed by overwrites) once they are older than the retention period. It runs
  delta-rs' *full* vacuum: the default "lite" vacuum only deletes tombstoned files, never the
  files of a run that died before committing.
- `optimize` compacts small files with delta-rs `optimize.compact`: one commit that removes the
  small files and adds bigger ones with the same rows (a data-change-free rewrite, so app
  transactions, i.e. the idempotency of committed runs, are kept).
- `orphan_files` lists data files on disk that the current version does not reference.

No DeltaTable handle outlives a call (see delta_table's note on delta-rs #2184).
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.transaction import CommitProperties

from batchscore.errors import SinkError
from batchscore.sinks.delta_table import (
    check_table_features,
    filesystem,
    normalize_path,
    one_line,
    open_table,
)

DEFAULT_RETAIN_HOURS = 168
"""Delta's default `delta.deletedFileRetentionDuration` (7 days)."""


@dataclass(frozen=True)
class VacuumResult:
    """What vacuum did: the files deleted (or, with dry_run, that would be deleted)."""

    path: str
    files: tuple[str, ...]
    dry_run: bool
    retain_hours: int
    version: int

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"vacuum {self.path}: {verb} {len(self.files)} unreferenced file(s) older than "
            f"{self.retain_hours} h (table version {self.version})"
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
    """Delete data files the latest version does not reference, older than `retain_hours`.

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
    try:
        deleted = table.vacuum(
            retention_hours=int(retain_hours),
            dry_run=dry_run,
            enforce_retention_duration=enforce_retention,
            full=True,
            commit_properties=CommitProperties(
                custom_metadata={"batchscore.maintenance": "vacuum"}
            ),
        )
    except Exception as exc:
        text = one_line(str(exc))
        hint = (
            " Pass a longer retention, or allow a short one explicitly "
            "(enforce_retention=False / --no-enforce-retention) when no job writes to the table."
            if "retention" in text.lower()
            else " Check the table and rerun."
        )
        raise SinkError(f"Delta table {table_path}: vacuum failed ({text}).{hint}") from None
    version = int(DeltaTable(table_path).version())
    base_prefix = table_path.rstrip("/") + "/"
    files = tuple(sorted(urllib.parse.unquote(f).removeprefix(base_prefix) for f in deleted))
    return VacuumResult(table_path, files, dry_run, int(retain_hours), version)


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
    table = open_table(table_path)
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
            f"Delta table {table_path}: optimize failed ({one_line(str(exc))}); if another "
            "job committed meanwhile, rerun optimize."
        ) from None
    del table
    after_table = DeltaTable(table_path)
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
