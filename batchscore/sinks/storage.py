"""Where a Delta table lies and how its files are reached: paths, filesystems, opening, deleting.

Every other module of the Delta layer names a table by the string `normalize_path` makes of it
and reaches its files through `filesystem`, so local paths, `file:` URIs and object-store URIs
behave alike. Partition folder names (`partition_dir`) are spelled here too: they are paths.

No DeltaTable handle outlives a call: processes that keep deltalake scans around can abort at
interpreter exit (delta-rs #2184), so every function opens the table, reads and lets it go.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable

import pyarrow.fs as pafs
from deltalake import DeltaTable

from batchscore.errors import SinkError, first_line

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
"""The folder name (and log label) of a null partition value."""
# Characters Spark/Hive escape in partition folder names (ExternalCatalogUtils.escapePathName).
_ESCAPED = frozenset("\"#%'*/:=?\\\x7f{[]^") | frozenset(chr(c) for c in range(0x20))


def normalize_path(path: str | os.PathLike[str]) -> str:
    """Absolute local path for local tables (also for `file:` URIs); other URIs unchanged."""
    text = os.fspath(path)
    if text.startswith("file:"):
        text = urllib.parse.unquote(urllib.parse.urlparse(text).path)
    elif "://" in text:
        return text.rstrip("/")
    return os.path.abspath(os.path.expanduser(text))


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem base path for a table path from normalize_path."""
    if "://" in path:
        fs, base = pafs.FileSystem.from_uri(path)
        return fs, base.rstrip("/")
    return pafs.LocalFileSystem(), path


def not_a_table(path: str) -> SinkError:
    """The error for a path that holds no Delta table, with the fix."""
    return SinkError(
        f"{path} is not a Delta table (no _delta_log). Check the path, or create the table by "
        "writing to it with write_delta(...)."
    )


def is_delta_table(path: str | os.PathLike[str]) -> bool:
    """True when `path` holds a Delta table (a readable `_delta_log`)."""
    try:
        return bool(DeltaTable.is_deltatable(normalize_path(path)))
    except Exception:
        return False


def open_table(path: str, *, version: int | None = None) -> DeltaTable:
    """DeltaTable at `path` (normalized), with SinkErrors that name the table and the fix."""
    if not is_delta_table(path):
        raise not_a_table(path)
    try:
        return DeltaTable(path, version=version)
    except Exception as exc:
        if version is not None:
            latest = int(DeltaTable(path).version())
            raise SinkError(
                f"Delta table {path} has no version {version} (latest is {latest}); "
                f"pass a version between 0 and {latest}, or None for the latest."
            ) from None
        raise SinkError(
            f"Delta table {path} cannot be opened: {first_line(str(exc))}; check the path and "
            "the _delta_log files."
        ) from None


def partition_dir(column: str, value: str | None) -> str:
    """Hive-style folder name `column=value`, escaped the way Spark escapes it."""
    text = HIVE_NULL if value is None else _escape(value)
    return f"{_escape(column)}={text}"


def _escape(name: str) -> str:
    return "".join(f"%{ord(ch):02X}" if ch in _ESCAPED else ch for ch in name)


def delete_and_prune(
    fs: pafs.FileSystem, base: str, relative_paths: Iterable[str], *, stop: str = ""
) -> list[str]:
    """Delete files under `base` (missing ones count as deleted), then the folders they leave
    empty, deepest first, up to (not including) `stop` (local filesystems only). The files
    deleted, in order."""
    folders: set[str] = set()
    gone: list[str] = []
    for rel in relative_paths:
        try:
            fs.delete_file(f"{base}/{rel}")
        except FileNotFoundError:
            pass
        except OSError:
            continue
        gone.append(rel)
        parent = os.path.dirname(rel)
        while parent and parent != stop:
            folders.add(parent)
            parent = os.path.dirname(parent)
    if isinstance(fs, pafs.LocalFileSystem):
        for folder in sorted(folders, key=lambda p: p.count("/"), reverse=True):
            try:
                os.rmdir(os.path.join(base, folder))
            except OSError:
                pass
    return gone


def written_files(path: str, write_id: str, *, folders: Iterable[str] | None = None) -> list[str]:
    """Relative paths of the data files on disk that write `write_id` produced (any attempt).

    `folders` (relative) limits the search; None searches the whole table (not `_delta_log`,
    nor `_batchscore`, where the files' markers lie).
    """
    fs, base = filesystem(path)
    prefix = f"part-{write_id}-"
    found: list[str] = []
    if folders is None:
        selectors = [pafs.FileSelector(base, allow_not_found=True, recursive=True)]
    else:
        selectors = [
            pafs.FileSelector(f"{base}/{f}" if f else base, allow_not_found=True)
            for f in sorted(set(folders))
        ]
    for selector in selectors:
        for info in fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.base_name.startswith(prefix):
                continue
            rel = info.path[len(base) :].lstrip("/")
            if not rel.startswith(("_delta_log/", "_batchscore/")):
                found.append(rel)
    return found
