"""Output tables: a Delta Lake sink and source written through delta-rs, no Delta JAR needed.

`delta_table` holds the driver-side API (read, write, history, schema checks); `delta_source`
holds the Spark Python data source ("batchscore_delta") whose tasks write the Parquet files.
"""

from __future__ import annotations

from batchscore.sinks.delta_table import (
    CommitResult,
    check_schema_compatible,
    history,
    is_delta_table,
    read_delta,
    register_view,
    table_version,
    transaction_version,
    unwrap_spark_error,
    write_delta,
)

__all__ = [
    "CommitResult",
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
