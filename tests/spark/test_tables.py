"""Write semantics, backfills, reruns, conflicts and housekeeping of the prediction table.

In-process on the shared `spark` fixture; each test works on its own copy of the demo.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import batchscore as bs
from batchscore.cli import run_cli
from batchscore.errors import CommitConflictError, SinkError
from batchscore.jobs.backfill import committed_models, date_range, run_range
from batchscore.sinks.log import table_version
from batchscore.sinks.maintenance import data_files_on_disk, live_files, optimize, orphan_files
from batchscore.sinks.spark_io import read_delta, write_delta

pytestmark = pytest.mark.spark

DAYS = ["2026-11-19", "2026-11-20", "2026-11-21"]
MODELS = 3
FOUR_PARTITIONS = [("a", 50), ("b", 50), ("c", 50), ("d", 50)]


def _copy_demo(demo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out"))
    return root


def _table(path: Path) -> pa.Table:
    return pa.table(DeltaTable(str(path)).to_pyarrow_table())


def _key_counts(table: pa.Table) -> Counter[tuple[Any, ...]]:
    return Counter(zip(table["sale_id"].to_pylist(), table["model"].to_pylist(), strict=True))


def _sorted_rows(table: pa.Table) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in sorted(r)))


def test_date_range_and_bad_ranges() -> None:
    assert date_range("2026-11-30", "2026-12-02") == ["2026-11-30", "2026-12-01", "2026-12-02"]
    with pytest.raises(bs.errors.SpecError, match="before --from"):
        date_range("2026-11-21", "2026-11-19")
    with pytest.raises(bs.errors.SpecError, match="not a date"):
        date_range("yesterday", "2026-11-19")


def test_backfill_resumes_reruns_and_only_new(
    spark: Any, demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_demo(demo, tmp_path)
    conf = root / "conf" / "demo.yaml"
    out = root / "out" / "predictions"
    spec = bs.load_spec(conf)
    # An "interrupted" backfill: only the first date made it.
    first = bs.run(spec, run_date=DAYS[0], spark=spark)
    assert first.status == "committed"
    lines: list[str] = []
    results = run_range(spec, start="2026-11-18", end=DAYS[-1], spark=spark, echo=lines.append)
    assert [r.status for r in results] == ["empty", "skipped", "committed", "committed"]
    assert len(lines) == 4 and "already committed" in lines[1]
    assert [r.table_version for r in results[2:]] == [1, 2]
    # Ten reruns of a committed date: no Spark job, no new version, no duplicate.
    for _ in range(10):
        assert bs.run(spec, run_date=DAYS[1], spark=spark).status == "skipped"
    assert table_version(out) == 2
    table = _table(out)
    counts = _key_counts(table)
    assert table.num_rows == 3 * 3_000 * MODELS and set(counts.values()) == {1}
    # A forced rerun replaces exactly its own partition (overwrite_partitions).
    before = {ds: n for ds, n in Counter(table["ds"].to_pylist()).items()}
    other_files = {f for f in live_files(out) if DAYS[1] not in f}
    forced = bs.run(spec, run_date=DAYS[1], spark=spark, force=True)
    assert forced.status == "committed" and forced.table_version == 3
    after = _table(out)
    assert Counter(after["ds"].to_pylist()) == before and set(_key_counts(after).values()) == {1}
    assert other_files <= live_files(out)  # other partitions' files untouched
    # --only-new: everything is up to date with the current models.
    lineage = committed_models(str(out), spec.name)
    assert set(lineage) == set(DAYS) and set(lineage[DAYS[0]]) == {
        "revenue_glm", "basket_class", "return_risk",
    }  # fmt: skip
    lines.clear()
    results = run_range(spec, start=DAYS[0], end=DAYS[-1], only_new=True, spark=spark,
                        echo=lines.append)  # fmt: skip
    assert [r.status for r in results] == ["skipped"] * 3
    assert all("up to date" in line for line in lines)
    # A new model set (one model dropped) makes the dates "new" again: --only-new re-scores
    # the last date only when asked for it, replacing its partition.
    text = re.sub(r"- name: return_risk\n(  .*\n)+", "", conf.read_text())
    assert "name: return_risk" not in text
    conf2 = root / "conf" / "demo_two_models.yaml"
    conf2.write_text(text)
    code = run_cli(["run", str(conf2), "--from", DAYS[-1], "--to", DAYS[-1], "--only-new"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "re-scored: new return_risk" in printed
    final = _table(out)
    last = final.filter(pa.compute.equal(final["ds"], DAYS[-1]))
    assert set(last["model"].to_pylist()) == {"revenue_glm", "basket_class"}
    assert last.num_rows == 3_000 * 2


def test_optimize_and_vacuum_keep_results(spark: Any, demo: Path, tmp_path: Path) -> None:
    root = _copy_demo(demo, tmp_path)
    out = root / "out" / "predictions"
    for day in DAYS:
        bs.run(root / "conf" / "demo.yaml", run_date=day, spark=spark)
    bs.run(root / "conf" / "demo.yaml", run_date=DAYS[0], spark=spark, force=True)
    before = _sorted_rows(_table(out))
    files_before = len(live_files(out))
    assert orphan_files(out)  # the forced rerun's replaced files
    # A dead run's file, as a killed job of a version without ownership markers left it (its
    # name and partition folder make it batchscore's; tests/spark/test_ownership.py has the rest).
    dead = out / f"ds={DAYS[0]}" / f"part-deadbeefdeadbeef-{'0' * 32}.snappy.parquet"
    dead.write_bytes(b"not really parquet")
    assert run_cli(["optimize", str(out), "--target-size", "64"]) == 0
    assert len(live_files(out)) <= files_before
    assert _sorted_rows(_table(out)) == before
    # Retention is enforced unless explicitly waived.
    assert run_cli(["vacuum", str(out), "--retain-hours", "0"]) == 4
    assert dead.exists()
    assert run_cli(["vacuum", str(out), "--dry-run"]) == 0  # 168 h: nothing is that old
    assert (
        run_cli(["vacuum", str(out), "--retain-hours", "0", "--no-enforce-retention", "--dry-run"])
        == 0
    )
    assert dead.exists()
    assert run_cli(["vacuum", str(out), "--retain-hours", "0", "--no-enforce-retention"]) == 0
    assert not dead.exists()
    assert orphan_files(out) == set() and data_files_on_disk(out) == live_files(out)
    assert _sorted_rows(_table(out)) == before
    # Idempotency survives maintenance commits.
    assert bs.run(root / "conf" / "demo.yaml", run_date=DAYS[1], spark=spark).status == "skipped"


def test_optimize_compacts_small_files(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "t"
    for i in range(5):
        write_delta(_small(spark, "a", 50 * i), path, mode="append", partition_by=["ds"])
    write_delta(_small(spark, "b", 1000), path, mode="append")
    before = _sorted_rows(_table(path))
    files = len(live_files(path))
    result = optimize(path)
    assert result.committed and result.version_after == result.version_before + 1
    assert result.files_after < files and result.files_removed >= 5
    assert _sorted_rows(_table(path)) == before
    again = optimize(path)
    assert not again.committed and "nothing to compact" in again.summary()


def test_time_travel_and_history(
    spark: Any, demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_demo(demo, tmp_path)
    out = root / "out" / "predictions"
    conf = root / "conf" / "demo.yaml"
    bs.run(conf, run_date=DAYS[0], spark=spark)
    bs.run(conf, run_date=DAYS[1], spark=spark)
    query = "SELECT count(*) AS n FROM preds"
    assert bs.sql(query, tables={"preds": str(out)}, spark=spark).collect()[0].n == 2 * 9_000
    old = bs.sql(query, tables={"preds": str(out)}, spark=spark, as_of={"preds": 0})
    assert old.collect()[0].n == 9_000
    capsys.readouterr()
    assert run_cli(["sql", query, "--table", f"preds={out}", "--as-of", "preds=0"]) == 0
    assert "| 9000 |" in capsys.readouterr().out
    assert run_cli(["history", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and f"run_date={DAYS[1]}" in lines[0] and "v1" in lines[0]
    assert "revenue_glm@" in lines[1] and "sales@v" in lines[1]


def _small(spark: Any, ds: str, start: int, n: int = 50, tag: str = "a") -> Any:
    return spark.createDataFrame(
        [(start + i, ds, f"{tag}{i}", float(i)) for i in range(n)],
        "id long, ds string, tag string, value double",
    )


def test_type_change_is_refused_naming_the_column(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_delta(_small(spark, "a", 0), path, mode="append", partition_by=["ds"])
    changed = spark.createDataFrame(
        [(1, "b", "x", "1.0")], "id long, ds string, tag string, value string"
    )
    with pytest.raises(SinkError, match=r"column 'value' changes type from double to string"):
        write_delta(changed, path, mode="append")
    base = _small(spark, "b", 0)
    wider = base.withColumn("extra__prediction", base.value)
    with pytest.raises(SinkError, match=r"new column 'extra__prediction'"):
        write_delta(wider, path, mode="append")
    assert table_version(path) == 0


def test_concurrent_writers(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_delta(_small(spark, "a", 0), path, mode="append", partition_by=["ds"])
    write_delta(_small(spark, "b", 100), path, mode="append", partition_by=["ds"])
    barrier = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def writer(name: str, df: Any, mode: Any) -> None:
        # Python data sources are looked up through the thread's active session (JVM side).
        spark._jvm.org.apache.spark.sql.SparkSession.setActiveSession(spark._jsparkSession)
        barrier.wait(timeout=60)
        try:
            outcomes[name] = write_delta(df, path, mode=mode)
        except Exception as exc:  # recorded, asserted below
            outcomes[name] = exc

    def race(jobs: list[tuple[str, Any, Any]]) -> None:
        outcomes.clear()
        threads = [threading.Thread(target=writer, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads)

    # Distinct partitions of one table, both overwrite_partitions and appends: all commit.
    race([
        ("x", _small(spark, "a", 0, tag="x"), "overwrite_partitions"),
        ("y", _small(spark, "b", 100, tag="y"), "overwrite_partitions"),
    ])  # fmt: skip
    assert all(getattr(o, "committed", False) for o in outcomes.values()), outcomes
    race([
        ("p", _small(spark, "c", 200, tag="p"), "append"),
        ("q", _small(spark, "d", 300, tag="q"), "append"),
    ])  # fmt: skip
    assert all(getattr(o, "committed", False) for o in outcomes.values()), outcomes
    table = read_delta(spark, path).toPandas()
    assert sorted(table.groupby("ds").size().items()) == FOUR_PARTITIONS
    assert set(table[table.ds == "a"].tag.str[0]) == {"x"}
    # The same partition (an existing one, then a new one): both read the table before either
    # committed, so exactly one commits and the other fails with a CommitConflictError naming
    # the partition. Never a torn, doubled or silently replaced partition; others untouched.
    for ds, start in (("a", 0), ("n", 500)):
        race([
            ("u", _small(spark, ds, start, tag="u"), "overwrite_partitions"),
            ("v", _small(spark, ds, start, tag="v"), "overwrite_partitions"),
        ])  # fmt: skip
        failures = [o for o in outcomes.values() if isinstance(o, Exception)]
        wins = [o for o in outcomes.values() if getattr(o, "committed", False)]
        assert len(wins) == 1 and len(failures) == 1, outcomes
        assert isinstance(failures[0], CommitConflictError), failures[0]
        assert f"partition ds={ds} was changed by version {wins[0].version}" in str(failures[0])
        winner = next(k for k, o in outcomes.items() if o is wins[0])
        table = read_delta(spark, path).toPandas()
        part = table[table.ds == ds]
        assert len(part) == 50 and set(part.tag.str[0]) == {winner}
        assert part.id.nunique() == 50
    table = read_delta(spark, path).toPandas()
    assert sorted(table.groupby("ds").size().items()) == [*FOUR_PARTITIONS, ("n", 50)]
