"""Small JSON files that Spark tasks leave for the driver, under the output table's folder.

The scoring task runs inside the Delta writer on executors; what it learns along the way (stage
times for `--profile`, null counts) reaches the driver as one JSON file per task under
`<table>/_batchscore/<kind>/<run id>/` (every executor can write there: it writes the table),
read and deleted by the driver after the commit. One file per task, never a shared one: tasks
run concurrently. `_`-prefixed folders are skipped by Delta readers and vacuum, and a killed
run's leftovers count as batchscore's own files (sinks.ownership).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pyarrow import fs as pafs


def task_dir(table_path: str, kind: str, run_id: str) -> str:
    return f"{table_path.rstrip('/')}/_batchscore/{kind}/{run_id}"


def write_task_file(folder: str, name: str, body: dict[str, Any]) -> None:
    filesystem, path = _filesystem(folder)
    filesystem.create_dir(path, recursive=True)
    with filesystem.open_output_stream(f"{path}/{name}.json") as out:
        out.write(json.dumps(body).encode())


def read_task_files(folder: str) -> list[dict[str, Any]]:
    """Every task's body under `folder` ([] when none was written)."""
    filesystem, path = _filesystem(folder)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    bodies = []
    for info in infos:
        if info.path.endswith(".json"):
            with filesystem.open_input_stream(info.path) as src:
                bodies.append(json.loads(src.read().decode()))
    return bodies


def read_task_file(folder: str, name: str) -> dict[str, Any] | None:
    """One body by name (None when it does not exist)."""
    filesystem, path = _filesystem(folder)
    try:
        with filesystem.open_input_stream(f"{path}/{name}.json") as src:
            body = json.loads(src.read().decode())
    except (FileNotFoundError, OSError):
        return None
    return body if isinstance(body, dict) else None


def remove_task_files(folder: str) -> None:
    try:
        filesystem, path = _filesystem(folder)
        filesystem.delete_dir(path)
    except (OSError, ValueError):
        pass


def _filesystem(folder: str) -> tuple[pafs.FileSystem, str]:
    """A URI through pyarrow's filesystems; a local path as it is (a URI would choke on
    characters such as '{' that a folder name may hold)."""
    if "://" in folder:
        filesystem, path = pafs.FileSystem.from_uri(folder)
        return filesystem, str(path)
    return pafs.LocalFileSystem(), folder


def task_name() -> str:
    """The task's partition (a retried attempt overwrites its own file), else a random name."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
    except ImportError:  # pragma: no cover - pyspark is a dependency
        context = None
    if context is not None:
        return f"part-{context.partitionId():05d}"
    return uuid.uuid4().hex
