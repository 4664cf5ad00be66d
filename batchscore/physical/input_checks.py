"""Checks of Parquet input folders before any Spark job: every file must be Parquet and agree
on the type of each column the job reads.

Spark reads a Parquet folder's schema from one file and fails (or, worse, casts) mid-job when
another file disagrees; a stray `notes.txt` among the files fails the job with a Java stack.
Both are the input's fault, so they are DataErrors (exit 2) naming the table, the file and the
fix, raised from the footers alone (no data is read). Names Spark skips (starting with `_` or
`.`) are skipped here too. Delta tables need no check: their log fixes schema and files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from batchscore.errors import DataError, first_line
from batchscore.plan.nodes import LogicalPlan, Scan


def check_parquet_inputs(plan: LogicalPlan) -> None:
    for scan in plan.scans():
        if not isinstance(scan, Scan) or scan.format != "parquet" or "://" in scan.path:
            continue
        _check_folder(scan.table, scan.path, scan.columns)


def _files(root: str) -> Iterator[str]:
    if os.path.isfile(root):
        yield root
        return
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in sorted(names):
            if not name.startswith(("_", ".")):
                yield os.path.join(folder, name)


def _check_folder(table: str, root: str, columns: tuple[str, ...] | None) -> None:
    seen: dict[str, tuple[pa.DataType, str]] = {}
    for path in _files(root):
        rel = os.path.relpath(path, root) if path != root else os.path.basename(path)
        try:
            schema = pq.read_schema(path)
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
