"""Output tables: a Delta Lake sink and source written through delta-rs, no Delta JAR needed.

The Delta layer, one responsibility per module (none imports Spark at import time except the
data source's own modules, source.py and writer.py):

- `spark_io`: the Spark entry points `write_delta`, `read_delta`, `register_view`
- `request`: `WriteRequest`, what one write asks for, and the `WritePlan` it resolves to
- `source` / `writer`: the Spark Python data source "batchscore_delta", its reader and writer
- `options`: the data source's name and the parsing of its string options
- `files`: the Parquet files of one write task
- `commit`: the one Delta commit of a write, its retries and conflict checks
- `log`: versions, app transactions, commit infos, history, conflicts
- `snapshot`: live files, partition values and the one partition-filter evaluator
- `schema`: Arrow <-> Delta types, compatibility, evolution, table features
- `storage`: paths, filesystems, opening tables, deleting files
- `spark_errors`: errors crossing the Spark boundary
- `ownership`, `transform`, `file_stats`, `encoding`: file markers, fused-write task files,
  file statistics, Parquet encodings; `maintenance` (vacuum, optimize) and `sql_server`.
"""

from __future__ import annotations

from batchscore.sinks.log import history, table_version, transaction_version
from batchscore.sinks.request import AppTransaction, FileSizing, WriteRequest
from batchscore.sinks.schema import SchemaPolicy, check_schema_compatible
from batchscore.sinks.spark_errors import unwrap_spark_error
from batchscore.sinks.spark_io import CommitResult, read_delta, register_view, write_delta
from batchscore.sinks.storage import is_delta_table
from batchscore.sinks.transform import FusedTransform

__all__ = [
    "AppTransaction",
    "CommitResult",
    "FileSizing",
    "FusedTransform",
    "SchemaPolicy",
    "WriteRequest",
    "check_schema_compatible",
    "history",
    "is_delta_table",
    "read_delta",
    "register_view",
    "table_version",
    "transaction_version",
    "unwrap_spark_error",
    "write_delta",
]
