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

from batchscore.sinks.storage import filesystem, is_object_store


def task_dir(table_path: str, kind: str, run_id: str) -> str:
    return f"{table_path.rstrip('/')}/_batchscore/{kind}/{run_id}"


def write_task_file(folder: str, name: str, body: dict[str, Any]) -> None:
    fs, path = filesystem(folder)
    if not is_object_store(folder):  # object stores have no folders (create_dir leaves markers)
        fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}.json") as out:
        out.write(json.dumps(body).encode())


def read_task_files(folder: str) -> list[dict[str, Any]]:
    """Every task's body under `folder` ([] when none was written)."""
    fs, path = filesystem(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    bodies = []
    for info in infos:
        if info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as src:
                bodies.append(json.loads(src.read().decode()))
    return bodies


def read_task_file(folder: str, name: str) -> dict[str, Any] | None:
    """One body by name (None when it does not exist)."""
    fs, path = filesystem(folder)
    try:
        with fs.open_input_stream(f"{path}/{name}.json") as src:
            body = json.loads(src.read().decode())
    except (FileNotFoundError, OSError):
        return None
    return body if isinstance(body, dict) else None


def remove_task_files(folder: str) -> None:
    try:
        fs, path = filesystem(folder)
        fs.delete_dir(path)
    except (OSError, ValueError):
        pass


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
