"""What a Delta table's log says: versions, app transactions, commit infos, history, conflicts.

Commits are read from the `_delta_log/<version>.json` files themselves rather than through
delta-rs' `history()`, which numbers commits from its loaded snapshot and mislabels them when
another writer commits in between. The sink's own facts about a commit (write id, mode, file and
row counts, the version the write read) live in its commit info under METADATA_KEY; finding a
write's commit by its write id is how a write learns whether it landed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow.fs as pafs

from batchscore.errors import CommitConflictError
from batchscore.sinks.storage import (
    HIVE_NULL,
    delta_table,
    filesystem,
    is_delta_table,
    normalize_path,
    not_a_table,
)

METADATA_KEY = "batchscore"
"""Key of the commit-info entry where the sink records its own facts (write id, mode, counts)."""

_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")
_STANDARD_COMMIT_KEYS = frozenset(
    {
        "timestamp",
        "operation",
        "operationParameters",
        "operationMetrics",
        "readVersion",
        "isolationLevel",
        "isBlindAppend",
        "engineInfo",
        "clientVersion",
        "userMetadata",
        "userId",
        "userName",
        "txnId",
        "inCommitTimestamp",
        "job",
        "notebook",
        "clusterId",
        "tags",
        "version",
    }
)


# --------------------------------------------------------------------------------------------
# versions and app transactions


def table_version(path: str | os.PathLike[str]) -> int | None:
    """Latest committed version of the table, or None when `path` holds no Delta table."""
    table_path = normalize_path(path)
    if not is_delta_table(table_path):
        return None
    return int(delta_table(table_path).version())


def current_version(path: str) -> int:
    """Latest committed version of the table, -1 when there is no table yet."""
    version = table_version(path)
    return -1 if version is None else version


def transaction_version(path: str | os.PathLike[str], app_id: str) -> int | None:
    """The last version committed for idempotent writer `app_id`, or None (no table / no txn)."""
    table_path = normalize_path(path)
    if not is_delta_table(table_path):
        return None
    value = delta_table(table_path).transaction_version(app_id)
    return None if value is None else int(value)


# --------------------------------------------------------------------------------------------
# commit infos


def log_commits(path: str, *, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(version, commitInfo) for the commit files in `_delta_log`, newest first (see the module
    docstring for why not delta-rs' history())."""
    return list(_newest_commits(path, limit=limit))


def _newest_commits(path: str, *, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """log_commits' pairs, each read only when asked for: a search stops at its match."""
    fs, base = filesystem(path)
    log = f"{base}/_delta_log"
    versions = sorted(
        (
            int(match.group(1))
            for info in fs.get_file_info(pafs.FileSelector(log, allow_not_found=True))
            if (match := _COMMIT_FILE.match(info.base_name)) is not None
        ),
        reverse=True,
    )
    if limit is not None:
        versions = versions[:limit]
    for version in versions:
        try:
            with fs.open_input_stream(f"{log}/{version:020d}.json") as stream:
                text = stream.read().decode("utf-8")
        except FileNotFoundError:
            continue
        info: dict[str, Any] = {}
        for line in text.splitlines():
            if '"commitInfo"' in line:
                action = json.loads(line)
                if isinstance(action.get("commitInfo"), dict):
                    info = action["commitInfo"]
                    break
        yield version, info


def find_commit(path: str, write_id: str, *, limit: int = 100) -> int | None:
    """Version of the commit that write `write_id` made, searching the last `limit` commits."""
    for version, info in _newest_commits(path, limit=limit):
        facts = info.get(METADATA_KEY)
        if isinstance(facts, dict) and facts.get("write_id") == write_id:
            return version
    return None


def lookup_commit(path: str, write_id: str) -> tuple[int | None, bool]:
    """(version of write_id's commit or None, whether the log could be read at all)."""
    try:
        return find_commit(path, write_id), True
    except Exception:
        return None, False


def sink_facts(path: str, version: int) -> dict[str, Any]:
    """The sink's own facts (METADATA_KEY) in the commit info of `version`; {} when none."""
    for found, info in _newest_commits(path, limit=None):
        if found == version:
            facts = info.get(METADATA_KEY)
            return facts if isinstance(facts, dict) else {}
    return {}


def history(path: str | os.PathLike[str], *, limit: int | None = None) -> list[dict[str, Any]]:
    """Commits of the table, newest first: version, timestamp (ms since epoch), operation,
    operation_parameters (without the bulky protocol/metadata JSON of a CREATE TABLE) and
    metadata (the custom commit metadata, as committed; the sink's own facts under
    "batchscore": write_id, mode, files, rows)."""
    table_path = normalize_path(path)
    if not is_delta_table(table_path):
        raise not_a_table(table_path)
    result = []
    for version, commit in log_commits(table_path, limit=limit):
        result.append(
            {
                "version": version,
                "timestamp": commit.get("timestamp"),
                "operation": commit.get("operation"),
                "operation_parameters": {
                    k: v
                    for k, v in (commit.get("operationParameters") or {}).items()
                    if k not in ("metadata", "protocol")
                },
                "metadata": {k: v for k, v in commit.items() if k not in _STANDARD_COMMIT_KEYS},
            }
        )
    return result


# --------------------------------------------------------------------------------------------
# write conflicts


def check_no_conflict(
    path: str,
    partition_columns: Sequence[str],
    written: Iterable[Mapping[str, str | None]],
    *,
    mode: str,
    read_version: int,
    latest: int,
) -> None:
    """Raise CommitConflictError when a commit in (read_version, latest] changed data that an
    overwrite of the `written` partitions (their values; mode overwrite_partitions) or of the
    whole table (mode overwrite) would replace. Data-change-free commits (optimize, schema
    changes) are fine."""
    if latest <= read_version:
        return
    mine = {tuple(values.get(c) for c in partition_columns) for values in written}
    for version in range(read_version + 1, latest + 1):
        actions = _log_actions(path, version)
        touched = _touched_partitions(actions, partition_columns)
        hit = touched if mode == "overwrite" else touched & mine
        if actions is None or hit:
            raise _conflict(path, partition_columns, sorted(hit, key=str), version, actions, mode,
                            read_version)  # fmt: skip


def _log_actions(path: str, version: int) -> list[dict[str, Any]] | None:
    """The actions of commit `version`, or None when its log file cannot be read."""
    fs, base = filesystem(path)
    try:
        with fs.open_input_stream(f"{base}/_delta_log/{version:020d}.json") as stream:
            text = stream.read().decode("utf-8")
    except (FileNotFoundError, OSError):
        return None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _touched_partitions(
    actions: list[dict[str, Any]] | None, partition_columns: Sequence[str]
) -> set[tuple[str | None, ...]]:
    """Partition keys in which `actions` added or removed rows (dataChange true)."""
    touched: set[tuple[str | None, ...]] = set()
    for action in actions or []:
        for kind in ("add", "remove"):
            body = action.get(kind)
            if isinstance(body, dict) and body.get("dataChange", True):
                values = body.get("partitionValues") or {}
                touched.add(tuple(values.get(c) for c in partition_columns))
    return touched


def _conflict(
    path: str,
    partition_columns: Sequence[str],
    keys: Sequence[tuple[str | None, ...]],
    version: int,
    actions: list[dict[str, Any]] | None,
    mode: str,
    read_version: int,
) -> CommitConflictError:
    info: Any = next((a["commitInfo"] for a in actions or [] if "commitInfo" in a), {})
    who = _describe_writer(info if isinstance(info, dict) else {})
    if actions is None:
        what = f"commit {version} cannot be read to rule out a conflict"
    else:
        where = ", ".join(_partition_label(partition_columns, k) for k in keys[:5])
        what = f"{where} {'was' if len(keys) == 1 else 'were'} changed by version {version}{who}"
    started = "before the table existed" if read_version < 0 else f"at version {read_version}"
    return CommitConflictError(
        f"Delta table {path}: another writer committed first: {what} after this {mode} write "
        f"read the table {started}, so committing would silently replace rows it never saw; "
        "nothing was committed and this write's files were deleted. Rerun the job once the "
        "other run has finished (an already committed run date is then skipped; --force "
        "replaces it)."
    )


def _partition_label(partition_columns: Sequence[str], key: tuple[str | None, ...]) -> str:
    if not partition_columns:
        return "the table"
    return "partition " + "/".join(
        f"{c}={HIVE_NULL if v is None else v}" for c, v in zip(partition_columns, key, strict=True)
    )


def _describe_writer(info: Mapping[str, Any]) -> str:
    facts = info.get(METADATA_KEY)
    parts = []
    if isinstance(info.get("batchscore.run_id"), str):
        parts.append(f"run {info['batchscore.run_id']}")
    if isinstance(facts, dict) and facts.get("write_id"):
        parts.append(f"write {facts['write_id']}")
    if not parts and info.get("operation"):
        parts.append(str(info["operation"]))
    return f" ({', '.join(parts)})" if parts else ""
