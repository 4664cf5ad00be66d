"""Spark Connect: which kind of session a call runs under, and the Connect-safe answers to what
the classic SparkContext gives.

Over Spark Connect (`sc://HOST:PORT`) the Python process is a thin gRPC client: there is no
SparkContext, no JVM gateway, no RDDs. DataFrames, SQL, `mapInArrow` and Spark 4's Python data
source API all work, because they run on the server's JVM and its Python workers. Every use of
the classic context in batchscore (default parallelism, partition counts, the master URL, the
executor probe with its job group) asks this module instead, so the choice is made in one
place: `is_connect(spark)`.

The URL may carry parameters (`sc://host:port/;token=...`); only `host:port` is ever printed.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from batchscore.errors import SpecError, StepError, first_line

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

REMOTE_ENV = "BATCHSCORE_REMOTE"
"""A Spark Connect URL: every command and `bs.*` call without --remote/--master uses it."""
SPARK_REMOTE_ENV = "SPARK_REMOTE"
"""pyspark's own variable for the same; honoured after BATCHSCORE_REMOTE."""

CONNECT_CONF: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
}
"""Session settings a Connect client may set; the server owns the static ones (executors,
Python workers, memory), which are given when the server starts."""

_LOCAL_MASTER = re.compile(r"^local(?:\[(\d+)(?:,\s*\d+)?\])?$")
_LOCAL_CLUSTER = re.compile(r"^local-cluster\[(\d+),\s*(\d+),\s*\d+\]$")
_PARALLELISM: dict[str, int] = {}
"""Default parallelism per Connect session id (measured once: it costs a small job)."""


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (pyspark.sql.connect.session.SparkSession)."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # the Connect client's dependencies (grpcio, ...) are not installed
        return False
    return isinstance(spark, ConnectSession)


def remote_url(remote: str | None = None) -> str | None:
    """The Connect URL to use: `remote`, else $BATCHSCORE_REMOTE, else $SPARK_REMOTE; None:
    classic Spark. A value that is not an `sc://HOST[:PORT]` URL is a SpecError."""
    for value, where in (
        (remote, "--remote"),
        (os.environ.get(REMOTE_ENV), REMOTE_ENV),
        (os.environ.get(SPARK_REMOTE_ENV), SPARK_REMOTE_ENV),
    ):
        if value is not None and value.strip():
            endpoint(value.strip(), where=where)
            return value.strip()
    return None


def endpoint(url: str, *, where: str = "--remote") -> str:
    """`host:port` of a Connect URL (the part that may be printed); SpecError when malformed."""
    try:
        from pyspark.sql.connect.client import DefaultChannelBuilder
    except ImportError as exc:
        raise SpecError(
            f"{where}: the Spark Connect client needs grpcio, grpcio-status, zstandard and "
            f"googleapis-common-protos ({first_line(exc)}); install 'pyspark[connect]'."
        ) from None
    if not url.startswith("sc://"):
        raise SpecError(
            f"{where}={url.split(';')[0]!r} is not a Spark Connect URL; write sc://HOST:PORT "
            "(the server's spark.connect.grpc.binding.port, default 15002)."
        )
    try:
        return str(DefaultChannelBuilder(url).endpoint)
    except ValueError as exc:
        detail = first_line(exc).split("Invalid URL for Spark Connect: ")[-1]
        raise SpecError(f"{where}: {detail}") from None


def check_reachable(url: str, *, timeout: float = 5.0) -> None:
    """A Connect server that accepts no TCP connection fails here in seconds (StepError, exit
    1), instead of after the gRPC client's minutes of retries."""
    where = endpoint(url)
    host, _, port = where.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except TimeoutError:
        why = f"no answer in {timeout:.0f} s"
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
    raise StepError(
        f"Spark Connect server sc://{where} is unreachable ({why}); start it "
        "(sbin/start-connect-server.sh, docs/connect.md) or fix --remote / $BATCHSCORE_REMOTE."
    )


def connect_session(url: str, conf: Mapping[str, Any] | None = None) -> SparkSession:
    """A Spark Connect session to `url` (reused when this process already has one to the same
    server), with CONNECT_CONF and `conf` set on it. A setting the server does not let a
    client change (static ones: executors, memory, Python) is a SpecError naming it."""
    from pyspark.sql import SparkSession

    check_no_classic(url)
    check_reachable(url)
    active = SparkSession.getActiveSession()
    if active is not None and is_connect(active) and session_endpoint(active) == endpoint(url):
        spark = active
    else:
        spark = SparkSession.builder.remote(url).create()
    for key, value in {**CONNECT_CONF, **(conf or {})}.items():
        try:
            spark.conf.set(key, str(value))
        except Exception as exc:
            raise SpecError(
                f"Spark setting {key} cannot be set from a Spark Connect client "
                f"({first_line(exc)[:160]}); set it where the server at sc://{endpoint(url)} "
                "is started (--conf), or leave it out."
            ) from None
    return spark


def check_no_classic(url: str) -> None:
    """One Python process holds classic Spark or Spark Connect sessions, not both (pyspark
    refuses the mix): say so, and what to do, before trying."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        raise SpecError(
            f"This Python process already runs a local SparkSession, so it cannot also connect "
            f"to sc://{endpoint(url)}; stop it first (spark.stop()), or run the Connect client "
            "in its own process."
        )


def session_id(spark: SparkSession) -> str:
    """A Connect session's id (the server's name for it; typed on the Connect class only)."""
    connect: Any = spark
    return str(connect.session_id)


def session_endpoint(spark: SparkSession) -> str:
    """`host:port` of a Connect session's server ('' when unknown)."""
    builder = getattr(getattr(spark, "client", None), "_builder", None)
    return str(getattr(builder, "endpoint", "") or "")


def describe(spark: SparkSession) -> str:
    """How messages name the session's cluster: the Connect server, or the master URL."""
    if is_connect(spark):
        return f"Spark Connect server sc://{session_endpoint(spark)}"
    return f"Spark master {master(spark)}"


def master(spark: SparkSession) -> str:
    """The master URL (over Connect: the server's, as its configuration says)."""
    if is_connect(spark):
        return str(spark.conf.get("spark.master", "") or "")
    return str(spark.sparkContext.master or "")


def default_parallelism(spark: SparkSession) -> int:
    """SparkContext.defaultParallelism. Over Connect: spark.default.parallelism when the server
    sets it, the cores of a local master, else measured once per session with a small job (the
    partitions Spark gives `range`, which is exactly this default)."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    key = session_id(spark)
    if key not in _PARALLELISM:
        _PARALLELISM[key] = _connect_parallelism(spark)
    return _PARALLELISM[key]


def _connect_parallelism(spark: SparkSession) -> int:
    configured = str(spark.conf.get("spark.default.parallelism", "") or "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    url = master(spark)
    local = _LOCAL_MASTER.match(url)
    if local is not None:
        return int(local.group(1) or 1)
    cluster = _LOCAL_CLUSTER.match(url)
    if cluster is not None:
        return int(cluster.group(1)) * int(cluster.group(2))
    from pyspark.sql import functions as F

    row = spark.range(0, 1 << 16).agg(F.max(F.spark_partition_id()).alias("p")).first()
    return 1 + int(row["p"]) if row is not None and row["p"] is not None else 1


def partition_count(df: DataFrame) -> int | None:
    """df.rdd.getNumPartitions() where Spark says it without a job; None over Connect (no RDDs:
    the count would cost a pass over the data), which callers read as unknown."""
    if is_connect(df.sparkSession):
        return None
    return int(df.rdd.getNumPartitions())


def probe_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """A trivial Python task: unpickling it imports batchscore on the worker."""
    import pyarrow as pa

    import batchscore._version  # noqa: F401  (the server's Python workers must have batchscore)

    for _ in batches:
        pass
    yield pa.record_batch([pa.array([1], pa.int32())], names=["ok"])


def probe_python(spark: SparkSession, seconds: float) -> None:
    """The executor check over Connect: one trivial Python task on the server's workers,
    interrupted after `seconds` through a session tag (Connect has no job groups). The server
    registered its executors when it started, so a task that runs proves both executors and a
    Python with batchscore; a task that cannot get executors is interrupted and reported."""
    tag = f"batchscore-probe-{uuid.uuid4().hex[:8]}"
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        try:
            spark.interruptTag(tag)
        except Exception:  # the probe ended (or the session closed) first: nothing to stop
            pass

    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True
    spark.addTag(tag)
    timer.start()
    try:
        spark.range(0, 1, numPartitions=1).mapInArrow(probe_batches, "ok int").collect()
    except Exception as exc:
        where = describe(spark)
        if fired.is_set():
            raise StepError(
                f"{where} did not run a trivial Python task in {seconds:g} s; its executors "
                "may be busy, missing or too small: check the server's log, or raise "
                "--executor-timeout."
            ) from None
        raise StepError(
            f"{where} cannot run batchscore's Python tasks ({probe_cause(str(exc))}); start the "
            "server with PYSPARK_PYTHON set to a Python that has batchscore installed "
            "(docs/connect.md)."
        ) from None
    finally:
        timer.cancel()
        spark.removeTag(tag)


def probe_cause(text: str) -> str:
    """The most telling line of a failed probe's Java/Python error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for marker in ("ModuleNotFoundError", "No module named", "Cannot run program", "Error"):
        for line in lines:
            if marker in line:
                return line[line.find(marker) :][:200]
    return (lines[0] if lines else "unknown error")[:200]
