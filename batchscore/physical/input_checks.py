"""Checks of Parquet input folders before any Spark job: every file must be Parquet and agree
on the type of each column the job reads.

Spark reads a Parquet folder's schema from one file and fails (or, worse, casts) mid-job when
another file disagrees; a stray `notes.txt` among the files fails the job with a Java stack.
Both are the input's fault, so they are DataErrors (exit 2) naming the table, the file and the
fix, raised from the footers alone (no data is read). Names Spark skips (starting with `_` or
`.`) are skipped here too. Delta tables need no check: their log fixes schema and files.
Folders on object stores are listed and read through sinks.storage, like the reader reads them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchscore.errors import DataError, first_line
from batchscore.plan.nodes import LogicalPlan, Scan
from batchscore.sinks.storage import filesystem


def check_parquet_inputs(plan: LogicalPlan) -> None:
    for scan in plan.scans():
        if not isinstance(scan, Scan) or scan.format != "parquet":
            continue
        _check_folder(scan.table, scan.path, scan.columns)


def _files(fs: pafs.FileSystem, root: str) -> Iterator[tuple[str, str]]:
    """(path in the filesystem, path relative to the table) of each file Spark would read."""
    if fs.get_file_info(root).type == pafs.FileType.File:
        yield root, root.rsplit("/", 1)[-1]
        return
    selector = pafs.FileSelector(root, allow_not_found=True, recursive=True)
    for info in sorted(fs.get_file_info(selector), key=lambda i: i.path):
        rel = info.path[len(root) :].lstrip("/")
        if info.type == pafs.FileType.File and not any(
            part.startswith(("_", ".")) for part in rel.split("/")
        ):
            yield info.path, rel


def _check_folder(table: str, root: str, columns: tuple[str, ...] | None) -> None:
    seen: dict[str, tuple[pa.DataType, str]] = {}
    fs, base = filesystem(root)
    for path, rel in _files(fs, base):
        try:
            with fs.open_input_file(path) as handle:
                schema = pq.read_schema(handle)
        except (pa.ArrowInvalid, OSError) as exc:
            why = first_line(exc)[:120]
            raise DataError(
                f"Table '{table}': file '{rel}' in {root} is not a readable Parquet file "
                f"({why}); move it out of the table's folder (or name it with a leading '_')."
            ) from None
        for field in schema:
            if columns is not None and field.name not in columns:
                continue
            first = seen.setdefault(field.name, (field.type, rel))
            if not _same(first[0], field.type):
                raise DataError(
                    f"Table '{table}': column '{field.name}' is {first[0]} in '{first[1]}' but "
                    f"{field.type} in '{rel}'; rewrite the files with one type for the column."
                )


def _same(a: pa.DataType, b: pa.DataType) -> bool:
    if a.equals(b):
        return True
    # int32 vs int64, float vs double: Spark widens these itself
    return bool(
        (pa.types.is_integer(a) and pa.types.is_integer(b))
        or (pa.types.is_floating(a) and pa.types.is_floating(b))
    )
