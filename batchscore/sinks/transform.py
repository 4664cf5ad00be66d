"""The batch transform a fused write applies on executors, shipped as a file under the table.

Data source options are strings that travel through the JVM plan (and its logs), so a scoring
task with its kernels (megabytes for large tree ensembles) does not belong there. The driver
pickles the task to `<table>/_batchscore/tasks/<write_id>.pkl`, a place every executor can reach
because it must write the table anyway, and passes the relative path and the sha256 of the bytes
as options. An executor unpickles only bytes whose sha256 matches, so a file swapped on shared
storage is refused rather than executed. The driver deletes the file when the write ends,
committed or not. `_`-prefixed folders are not data to delta-rs, its vacuum or the project's
maintenance, so the file is never mistaken for (or vacuumed as) a data file.

A caller hands write_delta a `FusedTransform` (the callable and its output schema); the data
source gets the `TransformRef` (where the pickle lies, its sha256 and the schema).
"""

from __future__ import annotations

import base64
import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.ipc

from batchscore.errors import SinkError, first_line
from batchscore.sinks.storage import filesystem

BatchTransform = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
TASKS_DIR = "_batchscore/tasks"
CACHE_SIZE = 2
"""Loaded transforms kept per worker process: a backfill's dates each bring a new one."""

_LOADED: OrderedDict[str, BatchTransform] = OrderedDict()


@dataclass(frozen=True)
class FusedTransform:
    """A fused write's batch transform (picklable) and the schema of the batches it yields,
    which is the schema the table gets, as the caller hands them to write_delta."""

    function: BatchTransform
    schema: pa.Schema


@dataclass(frozen=True)
class TransformRef:
    """Where a transform's pickle lies (relative to the table), its sha256 and output schema."""

    path: str
    sha256: str
    schema: pa.Schema


def task_path(write_id: str) -> str:
    return f"{TASKS_DIR}/{write_id}.pkl"


def store_transform(
    table_path: str, write_id: str, transform: BatchTransform, schema: pa.Schema
) -> TransformRef:
    """Pickle `transform` (cloudpickle: closures and local classes too) under the table."""
    from pyspark import cloudpickle

    try:
        data: bytes = cloudpickle.dumps(transform)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise SinkError(
            f"Delta table {table_path}: the batch transform {type(transform).__name__} cannot "
            f"be pickled ({type(exc).__name__}: {exc}); pass a picklable callable."
        ) from None
    rel = task_path(write_id)
    fs, base = filesystem(table_path)
    try:
        fs.create_dir(f"{base}/{TASKS_DIR}", recursive=True)
        with fs.open_output_stream(f"{base}/{rel}") as stream:
            stream.write(data)
    except OSError as exc:
        raise SinkError(
            f"Delta table {table_path}: cannot write the scoring task file {rel} "
            f"({first_line(exc)}); check that the table path is writable."
        ) from None
    return TransformRef(rel, hashlib.sha256(data).hexdigest(), schema)


def remove_transform(table_path: str, ref: TransformRef) -> None:
    """Best effort: a leftover task file is harmless, a failing cleanup must not fail the run."""
    fs, base = filesystem(table_path)
    try:
        fs.delete_file(f"{base}/{ref.path}")
    except OSError:
        pass


def load_transform(table_path: str, ref: TransformRef) -> BatchTransform:
    """The transform `ref` names, unpickled once per process and only if its sha256 matches."""
    cached = _LOADED.get(ref.sha256)
    if cached is not None:
        _LOADED.move_to_end(ref.sha256)
        return cached
    data = _read(table_path, ref)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise SinkError(
            f"Delta table {table_path}: scoring task file {ref.path} has sha256 {digest[:12]}, "
            f"not the {ref.sha256[:12]} the driver wrote; it was changed on storage and is "
            "refused. Check who writes to the table's _batchscore folder and rerun."
        )
    transform: BatchTransform = pickle.loads(data)  # the bytes passed the sha256 check above
    _LOADED[ref.sha256] = transform
    while len(_LOADED) > CACHE_SIZE:
        _LOADED.popitem(last=False)
    return transform


def _read(table_path: str, ref: TransformRef) -> bytes:
    fs, base = filesystem(table_path)
    try:
        with fs.open_input_stream(f"{base}/{ref.path}") as stream:
            return bytes(stream.read())
    except (FileNotFoundError, OSError) as exc:
        raise SinkError(
            f"Delta table {table_path}: scoring task file {ref.path} cannot be read "
            f"({first_line(exc)}); executors must reach the table path. Rerun the job."
        ) from None


def encode_schema(schema: pa.Schema) -> str:
    """An Arrow schema as an option string (IPC bytes, base64): exact, nested types included."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_schema(text: str, *, table_path: str) -> pa.Schema:
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text.encode("ascii"))))
    except (ValueError, pa.ArrowInvalid) as exc:
        raise SinkError(
            f"Delta table {table_path}: option transform_schema is not a serialized Arrow "
            f"schema ({first_line(exc)}); pass transform_schema=... to write_delta."
        ) from None


@dataclass(frozen=True)
class WithNullColumns:
    """`inner`'s batches plus typed null columns: table columns a fused write's transform does not
    produce (a model dropped from a wide-layout spec), which the files must still carry."""

    inner: BatchTransform
    fields: tuple[pa.Field, ...]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in self.inner(batches):
            nulls = [pa.nulls(batch.num_rows, f.type) for f in self.fields]
            schema = pa.schema([*batch.schema, *self.fields])
            yield pa.RecordBatch.from_arrays([*batch.columns, *nulls], schema=schema)


def with_null_columns(
    transform: BatchTransform, schema: pa.Schema, fields: Iterable[pa.Field]
) -> tuple[BatchTransform, pa.Schema]:
    """`transform` and its output `schema`, extended by null columns of `fields`."""
    extra = tuple(fields)
    return WithNullColumns(transform, extra), pa.schema([*schema, *extra])


def transform_options(ref: TransformRef | None) -> dict[str, str]:
    """The data source options that name a stored transform (none for a plain write)."""
    if ref is None:
        return {}
    return {
        "transform": ref.path,
        "transform_sha256": ref.sha256,
        "transform_schema": encode_schema(ref.schema),
    }
