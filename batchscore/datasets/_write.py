"""Shared helpers for the dataset builders: Arrow columns, Delta/Parquet writers, spec YAML.

Everything here writes without Spark except `write_spark_vector_parquet`, which exists so the
builders can exercise the real `VectorUDT` path when a session is at hand.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import yaml
from deltalake import write_deltalake

#: Spark ML's vector layout (`VectorUDT.sqlType()`): type 0 = sparse, 1 = dense.
VECTOR_STRUCT = pa.struct(
    [
        pa.field("type", pa.int8(), nullable=False),
        pa.field("size", pa.int32()),
        pa.field("indices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
        pa.field("values", pa.list_(pa.field("element", pa.float64(), nullable=False))),
    ]
)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (the spec's `sha256:` pin)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clear(path: Path) -> None:
    """Remove a folder the builder owns, so a rebuild starts from nothing."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def dense_list_array(values: np.ndarray) -> pa.ListArray:
    """A 2-D float array as an Arrow `list<double>` column, one fixed-length list per row."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    n, width = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=pa.float64()))


def sparse_vector_array(matrix: sp.spmatrix | sp.sparray) -> pa.StructArray:
    """A sparse matrix as Spark ML *sparse* vectors (the struct layout, type = 0)."""
    csr = sp.csr_matrix(matrix, dtype=np.float64)
    csr.sort_indices()
    n, width = csr.shape
    offsets = pa.array(csr.indptr.astype(np.int32), type=pa.int32())
    indices = pa.ListArray.from_arrays(
        offsets, pa.array(csr.indices.astype(np.int32), type=pa.int32())
    ).cast(VECTOR_STRUCT.field("indices").type)
    values = pa.ListArray.from_arrays(
        offsets, pa.array(csr.data.astype(np.float64), type=pa.float64())
    ).cast(VECTOR_STRUCT.field("values").type)
    kinds = pa.array(np.zeros(n, dtype=np.int8), type=pa.int8())
    sizes = pa.array(np.full(n, width, dtype=np.int32), type=pa.int32())
    return pa.StructArray.from_arrays([kinds, sizes, indices, values], fields=list(VECTOR_STRUCT))


def vector_struct_to_csr(column: pa.Array | pa.ChunkedArray) -> sp.csr_matrix:
    """Read a Spark-layout vector struct column (sparse or dense rows) back into CSR."""
    rows = column.to_pylist()
    if not rows:
        return sp.csr_matrix((0, 0))
    width = max(int(r["size"]) if r["type"] == 0 else len(r["values"]) for r in rows)
    data: list[float] = []
    cols: list[int] = []
    indptr = [0]
    for r in rows:
        if r["type"] == 0:
            cols.extend(r["indices"])
            data.extend(r["values"])
        else:
            cols.extend(range(len(r["values"])))
            data.extend(r["values"])
        indptr.append(len(cols))
    return sp.csr_matrix(
        (np.asarray(data, dtype=np.float64), np.asarray(cols, dtype=np.int32), indptr),
        shape=(len(rows), width),
    )


def write_delta(path: Path, table: pa.Table, *, partition_by: list[str] | None = None) -> None:
    """Write a fresh Delta table (any previous content of `path` is removed)."""
    clear(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_deltalake(str(path), table, partition_by=partition_by or None, mode="overwrite")


def write_parquet_folder(path: Path, table: pa.Table, *, files: int = 1) -> None:
    """Write a table as a folder of `files` Parquet files (`part-00000.parquet`, ...)."""
    clear(path)
    path.mkdir(parents=True)
    n = table.num_rows
    bounds = np.linspace(0, n, max(1, files) + 1).astype(int)
    for i in range(len(bounds) - 1):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        pq.write_table(table.slice(lo, hi - lo), path / f"part-{i:05d}.parquet")


def write_spark_vector_parquet(
    spark: Any,
    path: Path,
    key: str,
    keys: np.ndarray,
    matrix: sp.spmatrix | sp.sparray,
    column: str,
    *,
    files: int = 1,
) -> None:
    """Write (key int32, column VectorUDT sparse) as Parquet with Spark: the real UDT path."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import IntegerType, StructField, StructType

    clear(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    csr = sp.csr_matrix(matrix, dtype=np.float64)
    csr.sort_indices()
    width = int(csr.shape[1])
    rows = [
        (
            int(k),
            Vectors.sparse(
                width,
                csr.indices[csr.indptr[i] : csr.indptr[i + 1]].tolist(),
                csr.data[csr.indptr[i] : csr.indptr[i + 1]].tolist(),
            ),
        )
        for i, k in enumerate(keys)
    ]
    schema = StructType(
        [StructField(key, IntegerType(), False), StructField(column, VectorUDT(), True)]
    )
    df = spark.createDataFrame(rows, schema=schema).coalesce(max(1, files))
    df.write.mode("overwrite").parquet(str(path))


# --- spec YAML -----------------------------------------------------------------------------------


class _SpecDumper(yaml.SafeDumper):
    """SafeDumper that only treats true/false as booleans, so `on:` is written unquoted."""


_SpecDumper.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
}
_SpecDumper.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class Flow(dict[str, Any]):
    """A mapping written in flow style (`{path: ..., format: ...}`) for compact specs."""


class FlowList(list[Any]):
    """A list written in flow style (`[a, b]`)."""


class Quoted(str):
    """A string written double-quoted (SQL predicates read better that way)."""

    __slots__ = ()


def _flow_dict(dumper: yaml.SafeDumper, data: Flow) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


def _flow_list(dumper: yaml.SafeDumper, data: FlowList) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


def _quoted(dumper: yaml.SafeDumper, data: Quoted) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')


_SpecDumper.add_representer(Flow, _flow_dict)
_SpecDumper.add_representer(Quoted, _quoted)
_SpecDumper.add_representer(FlowList, _flow_list)


def relpath(target: Path, base: Path) -> str:
    """`target` relative to folder `base`, with forward slashes (specs are portable)."""
    return Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()


def write_spec(conf_path: Path, spec: dict[str, Any], *, header: str = "") -> None:
    """Write a job spec as YAML: block style at the top, flow style where marked."""
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.dump(
        spec, Dumper=_SpecDumper, sort_keys=False, default_flow_style=False, width=4096
    )
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()] if header else []
    conf_path.write_text("\n".join([*lines, body]) if lines else body)
