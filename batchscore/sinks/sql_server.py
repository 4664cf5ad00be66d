"""A Spark Thrift (HiveServer2 / JDBC) server over Delta tables, inside the Python driver.

`serve(...)` starts Spark's `HiveThriftServer2` with the driver's own SparkSession, so the
Python data source "batchscore_delta" is registered there, and exposes every table as a GLOBAL
TEMPORARY VIEW `global_temp.NAME`, which every JDBC session sees. A Python data source's scan is
planned when the view is created and never sees later commits, so a poll loop re-registers a
view whenever its table's Delta version moves. SIGTERM / SIGINT stop the loop, the server and
Spark.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from batchscore.errors import SinkError, SpecError
from batchscore.sinks.log import table_version
from batchscore.sinks.spark_io import register_view
from batchscore.sinks.storage import normalize_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_PORT = 10000
DEFAULT_POLL_SECONDS = 3.0
THRIFT_CONF: dict[str, str] = {
    "spark.sql.catalogImplementation": "in-memory",
    "spark.sql.hive.thriftServer.singleSession": "false",
    "spark.ui.enabled": "false",
}


def thrift_conf(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """Spark settings for a Thrift server listening on host:port (binary transport)."""
    return {
        **THRIFT_CONF,
        "spark.hadoop.hive.server2.thrift.port": str(port),
        "spark.hadoop.hive.server2.thrift.bind.host": host,
        "spark.hadoop.hive.server2.transport.mode": "binary",
    }


def jdbc_url(port: int, host: str = "127.0.0.1") -> str:
    return f"jdbc:hive2://{host}:{port}"


@dataclass
class ViewRegistry:
    """Global temp views over Delta tables, re-registered when a table's version moves."""

    spark: SparkSession
    tables: dict[str, str]
    versions: dict[str, int | None] = field(default_factory=dict)

    def refresh(self) -> list[str]:
        """Re-register the views whose table version changed; returns their names."""
        changed = []
        for name, path in self.tables.items():
            version = table_version(path)
            if version is None:
                continue
            if name in self.versions and self.versions[name] == version:
                continue
            register_view(self.spark, name, path, version=version, global_view=True)
            self.versions[name] = version
            changed.append(name)
        return changed


def _check_tables(tables: Mapping[str, str]) -> dict[str, str]:
    if not tables:
        raise SinkError("sql-server: no table given; pass --table NAME=PATH at least once.")
    resolved = {}
    for name, path in tables.items():
        full = normalize_path(path)
        if table_version(full) is None:
            raise SinkError(
                f"sql-server: table '{name}' at {full} is not a Delta table (no _delta_log); "
                "check the path or run a job that writes it first."
            )
        resolved[name] = full
    return resolved


CONNECT_REFUSAL = (
    "sql-server starts Spark's Thrift (JDBC) server inside this process's Spark driver, and a "
    "Spark Connect client has no driver of its own"
)


def refuse_connect(url: str | None) -> None:
    """sql-server needs the classic driver's JVM: over Spark Connect, a SpecError (exit 2)
    saying what to do instead (docs/connect.md)."""
    if url is None:
        return
    raise SpecError(
        f"{CONNECT_REFUSAL} (Spark Connect is selected by --remote, $BATCHSCORE_REMOTE or "
        "$SPARK_REMOTE); unset them to serve from a local or --master driver, or query the "
        "tables over Connect with `batchscore sql --remote sc://HOST:PORT`."
    )


def start_thrift_server(spark: SparkSession) -> Any:
    """Start HiveThriftServer2 on the session's SQLContext; returns the Java server object."""
    from batchscore.physical.connect import is_connect

    if is_connect(spark):
        refuse_connect("a Spark Connect session")
    jvm: Any = spark._jvm
    if jvm is None:
        raise SinkError("sql-server: the Spark session has no JVM gateway; start it locally.")
    server_class = jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
    return server_class.startWithContext(spark._jsparkSession.sqlContext())


def serve(
    tables: Mapping[str, str],
    *,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    master: str | None = None,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    stop: threading.Event | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Serve `tables` ({view name: table path}) over JDBC until SIGTERM/SIGINT (or `stop`).

    Returns 0 after a clean stop.
    """
    from batchscore.physical.connect import remote_url
    from batchscore.physical.session import get_spark

    refuse_connect(remote_url())
    resolved = _check_tables(tables)
    stop = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
    spark = get_spark(master, thrift_conf(port, host))
    server = None
    try:
        registry = ViewRegistry(spark, resolved)
        registry.refresh()
        server = start_thrift_server(spark)
        names = ", ".join(f"global_temp.{n} (v{registry.versions[n]})" for n in resolved)
        echo(f"JDBC URL: {jdbc_url(port, host)}  tables: {names}")
        echo(f"beeline -u {jdbc_url(port, host)} -e 'SELECT * FROM global_temp.<name> LIMIT 10'")
        _flush()
        while not stop.wait(poll_seconds):
            for name in registry.refresh():
                echo(f"re-registered global_temp.{name} at version {registry.versions[name]}")
                _flush()
    finally:
        if server is not None:
            try:
                server.stop()
            except Exception:
                pass
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo("sql-server stopped")
    _flush()
    return 0


def _flush() -> None:
    import sys

    sys.stdout.flush()


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 60.0) -> bool:
    """True once something accepts connections on host:port, False after `timeout` seconds."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.25)
    return False


__all__ = [
    "DEFAULT_POLL_SECONDS",
    "DEFAULT_PORT",
    "ViewRegistry",
    "jdbc_url",
    "serve",
    "start_thrift_server",
    "thrift_conf",
    "wait_for_port",
]
