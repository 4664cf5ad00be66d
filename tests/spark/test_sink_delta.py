"""The Delta sink and source, end to end: real Spark, real delta-rs, no mocks."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema

from batchscore.errors import BatchScoreError, CommitConflictError, SinkError
from batchscore.sinks import (
    AppTransaction,
    SchemaPolicy,
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
from batchscore.sinks.snapshot import load_snapshot
from batchscore.sinks.spark_errors import mark_error
from batchscore.sinks.storage import partition_dir

UTC = dt.UTC


def data_files(path: Path) -> list[str]:
    """Every Parquet file under the table folder, relative, sorted."""
    return sorted(
        str(p.relative_to(path)) for p in path.rglob("*.parquet") if "_delta_log" not in p.parts
    )


def read_with_deltalake(path: Path, tmp_path: Path) -> pa.Table:
    """deltalake's own reader, in a child process: deltalake scans can abort the interpreter at
    exit (delta-rs #2184), which must not take the test session down."""
    out = tmp_path / f"dl-{os.getpid()}-{len(list(tmp_path.iterdir()))}.feather"
    code = (
        "import os, sys, deltalake, pyarrow.feather as f;"
        "f.write_feather(deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table(), sys.argv[2]);"
        "sys.stdout.flush(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(out)], check=True, timeout=120)
    return feather.read_table(out)


def simple_df(spark: Any, rows: list[tuple[str, int, float]]) -> Any:
    return spark.createDataFrame(rows, "ds string, id long, score double")


# --------------------------------------------------------------------------------------------
# pure helpers (no Spark)


def test_unwrap_spark_error_finds_marked_error() -> None:
    marked = mark_error(CommitConflictError("Delta table /t: lost a race; rerun."))
    assert (
        str(marked) == "BATCHSCORE_ERROR[CommitConflictError]: Delta table /t: lost a race; rerun."
    )
    wrapped = RuntimeError(
        "[PYTHON_DATA_SOURCE_ERROR] Failed to commit\nTraceback (most recent call last):\n"
        f'  File "x.py", line 1\nbatchscore.errors.CommitConflictError: {marked}\n SQLSTATE: 38000'
    )
    error = unwrap_spark_error(wrapped)
    assert isinstance(error, CommitConflictError)
    assert str(error) == "Delta table /t: lost a race; rerun."
    assert unwrap_spark_error(RuntimeError("nothing of ours")) is None


def test_partition_dir_escapes_like_spark() -> None:
    assert partition_dir("ds", "2026-11-21") == "ds=2026-11-21"
    assert partition_dir("ds", "a b:c/d") == "ds=a b%3Ac%2Fd"
    assert partition_dir("ds", None) == "ds=__HIVE_DEFAULT_PARTITION__"


def test_check_schema_compatible_without_spark(tmp_path: Path) -> None:
    path = tmp_path / "t"
    schema = pa.schema([("id", pa.int64()), ("score", pa.float64()), ("ds", pa.string())])
    check_schema_compatible(path, schema, partition_by=["ds"])  # new table: fine
    with pytest.raises(SinkError, match="partition column 'dss' is not in the data"):
        check_schema_compatible(path, schema, partition_by=["dss"])
    with pytest.raises(SinkError, match=r"column 'score'.*partition by a string"):
        check_schema_compatible(path, schema, partition_by=["score"])
    with pytest.raises(SinkError, match=r"column 'x'.*null"):
        check_schema_compatible(path, pa.schema([("x", pa.null())]))
    DeltaTable.create(str(path), DeltaSchema.from_arrow(schema), partition_by=["ds"])
    not_null = pa.schema(
        [pa.field("id", pa.int64(), nullable=False), ("score", pa.float64()), ("ds", pa.string())]
    )
    check_schema_compatible(path, not_null, partition_by=["ds"])  # nullability may differ
    with pytest.raises(SinkError, match=r"partitioned by \['ds'\] but the write asks for \[\]"):
        check_schema_compatible(path, schema, partition_by=[])
    assert table_version(path) == 0
    assert transaction_version(path, "nobody") is None
    assert table_version(tmp_path / "nothing") is None


def test_concurrent_commits_conflict_cleanly(tmp_path: Path) -> None:
    """Racing overwrites either win or raise CommitConflictError and leave no files behind;
    racing appends all land (delta-rs and the sink retry them)."""
    import threading
    import time
    import uuid

    import pyarrow.parquet as pq

    from batchscore.sinks.commit import FileAdd, commit_files
    from batchscore.sinks.log import log_commits
    from batchscore.sinks.request import WritePlan, WriteRequest
    from batchscore.sinks.storage import written_files

    root = tmp_path / "race"
    schema = pa.schema([("x", pa.int64()), ("ds", pa.string())])

    def one_file(write_id: str, value: int) -> FileAdd:
        rel = f"ds=a/part-{write_id}-{uuid.uuid4().hex}.snappy.parquet"
        (root / "ds=a").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"x": [value]}), root / rel)
        stats = json.dumps({"numRecords": 1, "nullCount": {"x": 0}})
        size = (root / rel).stat().st_size
        return FileAdd(rel, size, {"ds": "a"}, int(time.time() * 1000), stats, 1)

    def commit(write_id: str, mode: str) -> None:
        try:
            request = WriteRequest(str(root), mode, partition_by=["ds"], write_id=write_id)
            version = commit_files(WritePlan(request, schema), [one_file(write_id, 1)])
            outcomes[write_id] = version
        except CommitConflictError as exc:
            outcomes[write_id] = exc

    outcomes: dict[str, int | CommitConflictError | None] = {}
    commit("w0", "append")
    for mode, tag in (("overwrite_partitions", "o"), ("append", "a")):
        threads = [threading.Thread(target=commit, args=(f"{tag}{i}", mode)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    winners = {k: v for k, v in outcomes.items() if isinstance(v, int)}
    losers = [k for k, v in outcomes.items() if isinstance(v, CommitConflictError)]
    assert len(winners) + len(losers) == 9 and all(k.startswith("o") for k in losers)
    assert all(f"a{i}" in winners for i in range(4))
    committed = {info["batchscore"]["write_id"]: v for v, info in log_commits(str(root))}
    assert committed == winners
    for loser in losers:
        assert "another writer committed first" in str(outcomes[loser])
        assert written_files(str(root), loser) == []


# --------------------------------------------------------------------------------------------
# Spark round trips


@pytest.mark.spark
def test_round_trip_every_supported_type(spark: Any, tmp_path: Path) -> None:
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("part", T.StringType()),
            T.StructField("s", T.StringType()),
            T.StructField("l", T.LongType()),
            T.StructField("i", T.IntegerType()),
            T.StructField("d", T.DoubleType()),
            T.StructField("f", T.FloatType()),
            T.StructField("b", T.BooleanType()),
            T.StructField("day", T.DateType()),
            T.StructField("ts", T.TimestampType()),
            T.StructField("tsn", T.TimestampNTZType()),
            T.StructField("ad", T.ArrayType(T.DoubleType())),
            T.StructField("af", T.ArrayType(T.FloatType())),
            T.StructField("vec", VectorUDT()),
        ]
    )
    ts = dt.datetime(2026, 11, 21, 10, 30, 0, 123456, tzinfo=UTC)
    naive = dt.datetime(2026, 1, 2, 3, 4, 5, 678901)
    rows = [
        ("a b:c", "x", 1, 2, 1.5, 0.5, True, dt.date(2026, 11, 21), ts, naive, [1.0, 2.0],
         [0.25], Vectors.dense([1.0, 2.0])),
        ("a b:c", None, None, None, None, None, None, None, None, None, None, None,
         Vectors.sparse(3, [1], [5.0])),
        ("z", "y" * 40, -(2**40), -7, -0.0, 3.0, False, dt.date(1999, 1, 1), ts, naive, [],
         [None], None),
    ]  # fmt: skip
    df = spark.createDataFrame(rows, schema)
    path = tmp_path / "types"
    result = write_delta(df, path, mode="append", partition_by=["part"])
    assert result.committed and result.version == 0
    assert result.rows == 3 and result.files >= 2
    assert data_files(path)[0].startswith("part=a b%3Ac/part-")

    # The Delta schema is valid and typed as Delta expects.
    fields = {
        f["name"]: f["type"] for f in json.loads(DeltaTable(str(path)).schema().to_json())["fields"]
    }
    assert fields["ts"] == "timestamp" and fields["i"] == "integer" and fields["f"] == "float"
    assert fields["tsn"] == "timestamp_ntz"
    assert fields["vec"]["fields"][0]["type"] == "byte"
    assert next(iter(fields)) == "part"

    back = read_delta(spark, path)
    assert back.columns == df.columns
    got = sorted(back.collect(), key=lambda r: (r.part, r.s or ""))
    expected_vec = [(1, None, None, [1.0, 2.0]), (0, 3, [1], [5.0]), None]
    by_s = {r.s: r for r in got}
    assert by_s["x"].ts == ts.replace(tzinfo=None)  # session time zone is UTC
    assert by_s["x"].tsn == naive and by_s[None].tsn is None
    assert by_s["x"].day == dt.date(2026, 11, 21) and by_s["x"].b is True
    assert by_s["x"].ad == [1.0, 2.0] and by_s["x"].af == [0.25]
    assert by_s["y" * 40].l == -(2**40) and by_s["y" * 40].af == [None]
    assert by_s[None].l is None and by_s[None].ts is None and by_s[None].ad is None
    vecs = [
        None if r.vec is None else tuple(r.vec) for r in (by_s["x"], by_s[None], by_s["y" * 40])
    ]
    assert vecs == [None if v is None else tuple(v) for v in expected_vec]

    # deltalake's own reader sees the same table (and pandas agrees with Spark).
    table = read_with_deltalake(path, tmp_path)
    assert table.num_rows == 3
    scalar = ["part", "s", "l", "i", "d", "f", "b", "day"]
    ours = back.select(*scalar).toPandas().sort_values(["part", "s"]).reset_index(drop=True)
    theirs = table.select(scalar).to_pandas().sort_values(["part", "s"]).reset_index(drop=True)
    theirs["day"] = pd.to_datetime(theirs["day"]).dt.date
    ours["day"] = pd.to_datetime(ours["day"]).dt.date
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    stats = {r["s"]: r for r in table.to_pylist()}
    assert stats["x"]["ts"] == ts and stats["x"]["vec"]["values"] == [1.0, 2.0]
    assert stats["x"]["tsn"] == naive

    # Column pruning returns the requested columns in the requested order.
    pruned = read_delta(spark, path, columns=["l", "part"])
    assert pruned.columns == ["l", "part"]
    assert sorted(r.part for r in pruned.collect()) == ["a b:c", "a b:c", "z"]


@pytest.mark.spark
def test_append_twice_then_time_travel_and_history(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "append"
    df = simple_df(spark, [("2026-11-21", 1, 0.5), ("2026-11-22", 2, 1.5)])
    first = write_delta(df, path, mode="append", partition_by=["ds"], metadata={"run_id": "r1"})
    second = write_delta(df, path, mode="append", partition_by=None, metadata={"run_id": "r2"})
    assert (first.version, second.version) == (0, 1)
    assert read_delta(spark, path).count() == 4
    assert read_delta(spark, path, version=0).count() == 2
    assert table_version(path) == 1

    commits = history(path)
    assert [c["version"] for c in commits] == [1, 0]
    assert commits[0]["metadata"]["run_id"] == "r2" and commits[1]["metadata"]["run_id"] == "r1"
    assert commits[0]["metadata"]["batchscore"]["rows"] == 2

    with pytest.raises(SinkError, match="has no version 7"):
        read_delta(spark, path, version=7).collect()

    # A SQL view over the table (re-registered to see a new version).
    register_view(spark, "sink_append_view", path)
    assert spark.sql("SELECT count(*) AS n FROM sink_append_view").first().n == 4
    register_view(spark, "sink_append_view", path, version=0)
    assert spark.sql("SELECT count(*) AS n FROM sink_append_view").first().n == 2


@pytest.mark.spark
def test_overwrite_partitions_replaces_only_written_partitions(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "overwrite"
    rows = [("a", 1, 1.0), ("b c:d", 2, 2.0), ("b c:d", 3, 3.0), (None, 4, 4.0)]
    write_delta(simple_df(spark, rows), path, mode="append", partition_by=["ds"])
    before = data_files(path)
    untouched = [f for f in before if not f.startswith("ds=b c%3Ad/")]

    new = simple_df(spark, [("b c:d", 20, 20.0), (None, 40, 40.0)])
    result = write_delta(new, path, mode="overwrite_partitions", partition_by=["ds"])
    assert result.committed and result.version == 1 and table_version(path) == 1
    got = sorted(((r.ds, r.id) for r in read_delta(spark, path).collect()), key=str)
    assert got == sorted([("a", 1), ("b c:d", 20), (None, 40)], key=str)
    live = {r["path"] for r in pa.table(DeltaTable(str(path)).get_add_actions()).to_pylist()}
    assert set(untouched) - {f for f in untouched if "HIVE_DEFAULT" in f} <= live

    # No rows: nothing is replaced and nothing is committed.
    empty = simple_df(spark, [("a", 1, 1.0)]).limit(0)
    assert not write_delta(empty, path, mode="overwrite_partitions", partition_by=["ds"]).committed
    assert table_version(path) == 1

    # Whole-table overwrite.
    result = write_delta(simple_df(spark, [("q", 9, 9.0)]), path, mode="overwrite")
    assert result.version == 2
    assert [(r.ds, r.id) for r in read_delta(spark, path).collect()] == [("q", 9)]


@pytest.mark.spark
def test_idempotent_rerun_commits_nothing_and_leaves_no_files(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "idem"
    df = simple_df(spark, [("a", 1, 1.0), ("b", 2, 2.0)])
    first = write_delta(
        df, path, mode="append", partition_by=["ds"], app=AppTransaction("job-1", 5)
    )
    assert first.committed and transaction_version(path, "job-1") == 5
    files = data_files(path)

    again = write_delta(
        df, path, mode="append", partition_by=["ds"], app=AppTransaction("job-1", 5)
    )
    assert not again.committed and again.version is None
    assert again.reason == "already_committed"
    older = write_delta(
        df, path, mode="append", partition_by=["ds"], app=AppTransaction("job-1", 4)
    )
    assert not older.committed
    # Straight through the data source (no driver-side pre-check): still nothing.
    (
        df.write.format("batchscore_delta")
        .mode("append")
        .options(path=str(path), partition_by="ds", app_id="job-1", app_version="5")
        .save()
    )
    assert table_version(path) == 0 and data_files(path) == files

    newer = write_delta(
        df, path, mode="append", partition_by=["ds"], app=AppTransaction("job-1", 6)
    )
    assert newer.committed and newer.version == 1 and transaction_version(path, "job-1") == 6


@pytest.mark.spark
def test_schema_change_is_rejected_and_table_untouched(spark: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    path = tmp_path / "schema"
    df = simple_df(spark, [("a", 1, 1.0)])
    write_delta(df, path, mode="append", partition_by=["ds"])
    files = data_files(path)

    with pytest.raises(SinkError, match=r"new column 'extra' \(string\)") as new_col:
        write_delta(df.withColumn("extra", F.lit("x")), path, mode="append", partition_by=["ds"])
    assert str(path) in str(new_col.value)
    with pytest.raises(SinkError, match="column 'score' changes type from double to string"):
        write_delta(df.withColumn("score", F.lit("x")), path, mode="append")
    with pytest.raises(SinkError, match=r"column 'id' \(long\) is missing"):
        write_delta(df.drop("id"), path, mode="append")

    # The same check inside the data source, reached through Spark's exception wrapping.
    with pytest.raises(Exception) as wrapped:
        (
            df.withColumn("score", F.col("score").cast("float"))
            .write.format("batchscore_delta")
            .mode("append")
            .options(path=str(path))
            .save()
        )
    error = unwrap_spark_error(wrapped.value)
    assert isinstance(error, SinkError) and "from double to float" in str(error)
    assert table_version(path) == 0 and data_files(path) == files

    # overwrite_schema replaces the schema on a whole-table overwrite.
    changed = df.withColumn("extra", F.lit("x"))
    result = write_delta(
        changed,
        path,
        mode="overwrite",
        partition_by=["ds"],
        schema_policy=SchemaPolicy(overwrite_schema=True),
    )
    assert result.version == 1 and read_delta(spark, path).columns == changed.columns


@pytest.mark.spark
def test_partition_filters_read_only_matching_partitions(spark: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    path = tmp_path / "filters"
    rows = [(f"2026-11-{d}", i, float(i)) for d in (20, 21, 22) for i in range(d)]
    df = simple_df(spark, rows).withColumn("day", F.col("ds").cast("date")).drop("ds")
    write_delta(df, path, mode="append", partition_by=["day"])

    one = read_delta(spark, path, partition_filters=[("day", "=", "2026-11-21")])
    assert one.count() == 21
    assert {r.day for r in one.select("day").distinct().collect()} == {dt.date(2026, 11, 21)}
    # Only the day=2026-11-21 files are planned (rows are not filtered after the read).
    planned = load_snapshot(str(path), partition_filters=[["day", "=", "2026-11-21"]]).files
    assert planned and all(f.path.startswith("day=2026-11-21/") for f in planned)
    assert one.rdd.getNumPartitions() <= len(planned)
    assert read_delta(spark, path).rdd.getNumPartitions() >= 2  # spread over the parallelism

    two = read_delta(
        spark, path, partition_filters=[("day", "in", [dt.date(2026, 11, 20), "2026-11-22"])]
    )
    assert two.count() == 42
    later = read_delta(spark, path, partition_filters=[("day", ">", dt.date(2026, 11, 20))])
    assert later.count() == 43
    either = read_delta(
        spark, path, partition_filters=[[("day", "=", "2026-11-20")], [("day", "=", "2026-11-22")]]
    )
    assert either.count() == 42
    assert read_delta(spark, path, partition_filters=[("day", "=", "2030-01-01")]).count() == 0
    with pytest.raises(SinkError, match="'id', which is not a partition column"):
        read_delta(spark, path, partition_filters=[("id", "=", 1)])


@pytest.mark.spark
def test_failed_job_leaves_table_and_disk_unchanged(spark: Any, tmp_path: Path) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    path = tmp_path / "failed"
    base = simple_df(spark, [("a", 1, 1.0)])
    write_delta(base, path, mode="append", partition_by=["ds"])
    files = data_files(path)

    def fail_late(value):  # no type hints: with hints pyspark guesses a pandas UDF
        if value == 1999:  # the last row of the last of 4 partitions: other tasks wrote files
            import time

            time.sleep(1.0)
            raise ValueError("boom on row 1999")
        return float(value)

    rows = spark.range(0, 2000, numPartitions=4).select(
        (F.col("id") % 3).cast("string").alias("ds"),
        F.col("id"),
        F.udf(fail_late, T.DoubleType())(F.col("id")).alias("score"),
    )
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "50")
    try:
        # Tiny files and row groups, so tasks (the failing one too) have files on disk mid-way.
        with pytest.raises(Exception, match="boom on row 1999"):
            (
                rows.write.format("batchscore_delta")
                .mode("append")
                .options(path=str(path), max_file_rows="40", row_group_rows="20")
                .save()
            )
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    assert table_version(path) == 0
    assert data_files(path) == files
    assert read_delta(spark, path).count() == 1


@pytest.mark.spark
def test_not_a_delta_table_and_empty_tables(spark: Any, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.parquet").write_bytes(b"")
    with pytest.raises(SinkError, match="is not a Delta table"):
        read_delta(spark, plain)
    with pytest.raises(Exception) as wrapped:
        spark.read.format("batchscore_delta").load(str(plain)).collect()
    error = unwrap_spark_error(wrapped.value)
    assert isinstance(error, BatchScoreError) and "is not a Delta table" in str(error)
    assert not is_delta_table(plain)

    # An empty write makes no commit and no table.
    empty = simple_df(spark, [("a", 1, 1.0)]).limit(0)
    result = write_delta(empty, tmp_path / "new", mode="append", partition_by=["ds"])
    assert not result.committed and not is_delta_table(tmp_path / "new")
    assert result.reason == "empty"

    # Straight through the data source: an unpartitioned table in a folder that does not exist.
    fresh = tmp_path / "deep" / "fresh"
    simple_df(spark, [("a", 1, 1.0), ("b", 2, 2.0)]).write.format("batchscore_delta").mode(
        "append"
    ).save(str(fresh))
    assert table_version(fresh) == 0 and read_delta(spark, fresh).count() == 2
    assert all("/" not in f for f in data_files(fresh))

    # A table without files reads as zero rows with its schema.
    created = tmp_path / "created"
    schema = pa.schema([("id", pa.int64()), ("ds", pa.string())])
    DeltaTable.create(str(created), DeltaSchema.from_arrow(schema), partition_by=["ds"])
    frame = read_delta(spark, created)
    assert frame.columns == ["id", "ds"] and frame.count() == 0
