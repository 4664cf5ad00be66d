"""Lookup joins (physical/lookups.py): small dimensions joined in the scoring task give the
batches, and so the predictions, of Spark's own left join."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import batchscore as bs
from batchscore.errors import DataError
from batchscore.jobs.run import plan_job, run_job
from batchscore.physical.assemble import Column, assemble
from batchscore.physical.lookups import DenseList, LookupJoin, LookupJoins, read_on_driver
from batchscore.physical.lower import lower_for_write
from batchscore.plan.lookups import ENV
from batchscore.plan.nodes import Join, Scan
from tests.spark.test_factorize import _check_against_models, _predictions, _variant
from tests.star import build_star

pytestmark = pytest.mark.spark
DAY = "2026-11-21"


def _lookups(spark: Any, spec: Any) -> Any:
    _, task, _ = lower_for_write(
        spark, plan_job(spec), run_id="r", scored_at=datetime.now(UTC), check_keys=False
    )
    return task.lookups


def _both_ways(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, factorize: str
) -> list[Any]:
    """Run the star job with lookups on and off: the same predictions, and the models' own.
    Gives the lookup joins of the lookup run."""
    star = build_star(tmp_path, seed=seed, fact_rows=300, a_rows=12, b_rows=9, c_rows=4,
                      missing=0.2, nan_rate=0.05)  # fmt: skip
    outputs, joins = {}, []
    for name, switch in (("lookup", "1"), ("spark", "0")):
        monkeypatch.setenv(ENV, switch)
        spec = bs.load_spec(_variant(star, name, factorize), run_date=DAY)
        lookups = _lookups(spark, spec)
        looked_up = [
            line for line in bs.explain(spec).splitlines() if "in the scoring task" in line
        ]
        if switch == "1":  # dim_b alone: dim_a has dim_c joined below it
            assert lookups is not None and [j.table for j in lookups.joins] == ["dim_b"]
            assert len(looked_up) == 1 and "LeftJoin dim_b" in looked_up[0]
            joins = list(lookups.joins)
        else:
            assert lookups is None and not looked_up
        run_job(spec, spark=spark, rules=())
        outputs[name] = _predictions(tmp_path / f"out_{name}")
        _check_against_models(star, outputs[name])
    for model, table in outputs["lookup"].items():
        same = [c for c in table.column_names if c not in ("run_id", "scored_at")]
        assert table.select(same).equals(outputs["spark"][model].select(same)), model
    return joins


@pytest.mark.parametrize("seed", [3, 11])
def test_lookup_joins_score_what_spark_joins_score(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Missing and null foreign keys, an int32 key against an int64 one, a sparse vector: the
    same predictions with the join in the task and in Spark, and the models' own."""
    _both_ways(spark, tmp_path, monkeypatch, seed, "never")


def test_a_factorized_dimension_ships_its_partial_scores(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`factorize: always`: dim_b's partial scores are computed on the driver and looked up
    by key (gathered as fixed-width arrays), where Spark would join the dimension pass's
    output."""
    (lookup,) = _both_ways(spark, tmp_path, monkeypatch, 13, "always")
    partials = [c for c in lookup.columns.column_names if "partial__" in c]
    assert partials and set(partials) <= set(lookup.dense)


def test_dense_lists_gather_what_arrow_take_gathers() -> None:
    values = pa.array([[1.0, 2.0], None, [3.0, float("nan")], [4.0, 5.0]], pa.list_(pa.float64()))
    dense = DenseList.of(values)
    assert dense is not None
    at = np.array([3, -1, 1, 2, 0, 0])
    want = values.take(pa.array(at, mask=at < 0))
    got = dense.take(at)
    assert got is not None and got.to_pylist()[:2] == want.to_pylist()[:2]
    assert got.is_null().to_pylist() == want.is_null().to_pylist()
    assert np.isnan(got.to_pylist()[3][1]) and got.to_pylist()[4:] == want.to_pylist()[4:]
    ragged = pa.array([[1.0], [2.0, 3.0]], pa.list_(pa.float64()))
    holes = pa.array([[1.0, None]], pa.list_(pa.float64()))
    assert DenseList.of(ragged) is None and DenseList.of(holes) is None


def _join(table: str = "dim") -> Join:
    fact = Scan("fact", "delta", "unused")
    return Join(fact, Scan(table, "delta", "unused"), table, "fact", (("k", "id"),))


def _positions(lookup: LookupJoin, probe: pa.RecordBatch) -> list[int | None]:
    return [None if r < 0 else int(r) for r in lookup.rows(probe)]


def test_positions_follow_a_left_join_on_integer_and_string_keys(spark: Any) -> None:
    dimension = spark.createDataFrame(
        [(5, "e", 0.5), (-2, "b", 2.0), (None, None, 9.0), (7, "g", 7.0)],
        "dim__id long, dim__name string, dim__x double",
    )
    by_id = LookupJoin.build(_join(), dimension, pa.int32(), ["dim__x"])
    assert by_id is not None
    probe = pa.record_batch({"fact__k": pa.array([7, None, -2, 3, 5, 5], pa.int32())})
    rows = _positions(by_id, probe)
    assert rows == [3, None, 1, None, 0, 0]  # a null key matches nothing, not the null row
    assert by_id.columns.column("dim__x").take(pa.array([3, 1])).to_pylist() == [7.0, 2.0]

    named = dimension.withColumnRenamed("dim__id", "other").withColumnRenamed(
        "dim__name", "dim__id"
    )
    by_name = LookupJoin.build(_join(), named, pa.string(), ["dim__x"])
    assert by_name is not None
    probe = pa.record_batch({"fact__k": pa.array(["g", None, "zz", "e"])})
    assert _positions(by_name, probe) == [3, None, None, 0]
    keyed = LookupJoin.build(_join(), dimension, pa.int64(), ["dim__id", "dim__x"])
    assert keyed is not None and keyed.columns.column_names == ["dim__id", "dim__x"]
    # a float key stays with Spark's join (NaN equals NaN there)
    assert LookupJoin.build(_join(), dimension, pa.float64(), ["dim__x"]) is None


@pytest.mark.parametrize("keys", [[5, -2, 9, 7], [5, -2, 9, 10**12]], ids=["table", "search"])
def test_gathered_blocks_are_the_blocks_of_the_joined_columns(spark: Any, keys: list[int]) -> None:
    """A thin join leaves the looked-up columns out and gives their blocks gathered by fact row:
    the blocks assembly makes of the full join's columns, bit for bit (missing and null keys,
    null values, dense arrays, sparse vectors). Keys over a short range are found through a
    table, others by binary search. A dimension row that cannot be assembled keeps the column
    on the Arrow path, which refuses it only for the fact rows that read it."""
    vector = "struct<type: tinyint, size: int, indices: array<int>, values: array<double>>"
    dimension = spark.createDataFrame(
        [
            (keys[0], 0.5, [1.0, 2.0], (0, 70, [3, 69], [1.5, -2.0])),
            (keys[1], None, None, (1, None, None, [float(i) for i in range(70)])),
            (keys[2], 2.5, [3.0, float("nan")], None),
            (keys[3], 3.5, [4.0, 0.0], (0, 70, [], [])),
        ],
        f"dim__id long, dim__x double, dim__arr array<double>, dim__vec {vector}",
    )
    wanted = ["dim__x", "dim__arr", "dim__vec"]
    lookup = LookupJoin.build(_join(), dimension, pa.int64(), wanted)
    assert lookup is not None
    joins = LookupJoins((lookup,), ("fact__k", *wanted, lookup.flag))
    columns = (Column("dim__x", "x", "scalar", 1), Column("dim__arr", "arr", "array", 2),
               Column("dim__vec", "vec", "vector", 70))  # fmt: skip
    probe = pa.record_batch({"fact__k": pa.array([keys[3], None, keys[1], 3, keys[0], keys[2]])})
    full, none = joins.join(probe)
    assert not none and full.schema.names == ["fact__k", *wanted, lookup.flag]
    assert full.column(lookup.flag).to_pylist() == [True, None, True, None, True, True]
    thin, blocks = joins.join(probe, columns, thin=True)
    assert thin.schema.names == ["fact__k", lookup.flag] and set(blocks) == set(wanted)
    want = assemble(full, columns, {})
    got = assemble(thin, columns, dict(blocks))
    assert type(got) is type(want)
    np.testing.assert_array_equal(got.toarray(), want.toarray())
    assert (lookup.built["direct"] is None) == (keys[3] == 10**12)
    bad = dimension.union(
        spark.createDataFrame([(11, 1.0, [1.0], None)], dimension.schema)  # a 1-wide array
    )
    lookup = LookupJoin.build(_join(), bad, pa.int64(), wanted)
    assert lookup is not None
    joins = LookupJoins((lookup,), ("fact__k", *wanted, lookup.flag))
    thin, blocks = joins.join(probe, columns, thin=True)
    assert "dim__arr" in thin.schema.names and "dim__arr" not in blocks
    assert np.array_equal(assemble(thin, columns, dict(blocks)).toarray(), want.toarray(),
                          equal_nan=True)  # fmt: skip
    reads_it = pa.record_batch({"fact__k": pa.array([11])})
    with pytest.raises(DataError, match="Feature 'arr' has 1 values"):
        thin, blocks = joins.join(reads_it, columns, thin=True)
        assemble(thin, columns, dict(blocks))


def test_scan_schemas_worked_out_without_spark_are_the_ones_spark_gives(
    spark: Any, tmp_path: Path
) -> None:
    """Dimensions looked up with no Spark frame take their types from the planner's schema:
    Spark's own for Delta tables and pyarrow-written Parquet of plain types, the schema Spark
    wrote into its Parquet files (vectors as VectorUDT); no schema where they could differ."""
    import pyarrow.parquet as pq
    from pyspark.ml.linalg import Vectors

    from batchscore.physical.lookups import scan_schema
    from batchscore.physical.lower import _scan
    from batchscore.plan.catalog import describe_table
    from batchscore.spec.model import TableSpec

    star = build_star(tmp_path, seed=2, fact_rows=40, a_rows=5, b_rows=4, c_rows=3,
                      missing=0.2, nan_rate=0.0)  # fmt: skip
    values = pa.array([[1.0], None], pa.list_(pa.float64()))
    plain = pa.table({"k": pa.array([1, 2], pa.int32()), "s": ["a", None], "v": values,
                      "b": [True, False]})  # fmt: skip
    (tmp_path / "plain").mkdir()
    pq.write_table(plain, tmp_path / "plain" / "part-0.parquet")
    vectors = spark.createDataFrame([(1, Vectors.sparse(3, [1], [2.0]))], ["k", "v"])
    vectors.selectExpr("cast(k as int) k", "v").write.parquet(str(tmp_path / "by_spark"))
    odd = pa.table({"k": pa.array([1], pa.uint32()), "t": pa.array([1], pa.timestamp("us"))})
    (tmp_path / "odd").mkdir()
    pq.write_table(odd, tmp_path / "odd" / "part-0.parquet")
    tables = [("dim_a", "delta"), ("dim_b", "parquet"), ("dim_c", "parquet")]
    tables += [("plain", "parquet"), ("by_spark", "parquet"), ("odd", "parquet")]
    for name, fmt in tables:
        folder = star.root / name if name.startswith("dim") else tmp_path / name
        info = describe_table(name, TableSpec(path=str(folder), format=fmt))
        scan = Scan(name, fmt, info.path)
        got = scan_schema(scan, info.schema)
        if name == "odd":
            assert got is None
            continue
        assert got == _scan(spark, scan).schema, name
        assert got is not None and got.names[0] == f"{name}__{info.schema.names[0]}"


def test_a_duplicate_dimension_key_is_refused_as_spark_refuses_it(spark: Any) -> None:
    dimension = spark.createDataFrame([(1, 0.5), (2, 1.0), (2, 3.0)], "dim__id long, dim__x double")
    with pytest.raises(DataError, match=r"Dimension table 'dim' has 2 rows for key id=2"):
        LookupJoin.build(_join(), dimension, pa.int64(), ["dim__x"])


def _stable(path: Path, keys: list[str]) -> pa.Table:
    """A Delta table's rows without the run's own columns, in key order."""
    table = DeltaTable(str(path)).to_pyarrow_table()
    own = ("run_id", "scored_at", "quarantined_at")
    table = table.drop_columns([c for c in own if c in table.column_names])
    return table.sort_by([(k, "ascending") for k in keys])


def test_a_quarantine_join_stays_in_spark_and_the_others_are_looked_up(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join with `on_missing: quarantine` filters the joined rows in Spark: it is not looked
    up, another dimension still is, and the predictions and the quarantined rows are those of
    Spark's joins."""
    star = build_star(tmp_path, seed=5, fact_rows=200, a_rows=6, b_rows=5, c_rows=3,
                      missing=0.2, nan_rate=0.0)  # fmt: skip
    text = star.spec.read_text().replace(
        "      on: {fk_a: a_id}", "      on: {fk_a: a_id}\n      on_missing: quarantine"
    )
    text = text.replace("factorize: always", "factorize: never")
    assert "on_missing: quarantine" in text and "factorize: never" in text
    tables = {}
    for name, switch in (("lookup", "1"), ("spark", "0")):
        monkeypatch.setenv(ENV, switch)
        path = tmp_path / f"quarantine_{name}.yaml"
        path.write_text(
            text.replace(
                "output: {path: out,", f"output: {{path: out_{name}, quarantine: held_{name},"
            )
        )
        spec = bs.load_spec(path, run_date=DAY)
        lookups = _lookups(spark, spec)
        assert (lookups is not None and [j.table for j in lookups.joins] == ["dim_b"]) is (
            switch == "1"
        )
        run_job(spec, spark=spark, rules=())
        tables[name] = [
            _stable(tmp_path / f"out_{name}", ["id", "model"]),
            _stable(tmp_path / f"held_{name}", ["id"]),
        ]
    assert tables["lookup"][1].num_rows > 0  # rows without a dim_a row were held back
    for mine, theirs in zip(tables["lookup"], tables["spark"], strict=True):
        assert mine.equals(theirs.select(mine.column_names))


def test_a_looked_up_dimension_reaches_the_delta_table_in_every_row(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every fact row of the day is written once, whatever its key found."""
    star = build_star(tmp_path, seed=8, fact_rows=200, a_rows=5, b_rows=4, c_rows=2,
                      missing=0.2, nan_rate=0.0)  # fmt: skip
    monkeypatch.setenv(ENV, "1")
    spec = bs.load_spec(_variant(star, "rows", "never"), run_date=DAY)
    run_job(spec, spark=spark, rules=())
    table = DeltaTable(str(tmp_path / "out_rows")).to_pyarrow_table()
    ids = np.array(table.column("id").to_pylist())
    expected = star.ids[1::2]
    for model in ("ridge", "multi", "binary"):
        mine = np.sort(ids[np.array(table.column("model").to_pylist()) == model])
        assert mine.tolist() == sorted(expected.tolist())


def test_a_dimension_read_on_the_driver_equals_what_spark_reads(spark: Any, tmp_path: Path) -> None:
    """pyarrow on the driver (no Spark job) gives the rows and types Spark's scan gives: a
    Delta table with an array column, a Parquet folder with a sparse-vector struct."""
    from batchscore.physical.lower import _scan

    star = build_star(tmp_path, seed=2, fact_rows=50, a_rows=7, b_rows=6, c_rows=3,
                      missing=0.0, nan_rate=0.0)  # fmt: skip
    plan = plan_job(bs.load_spec(_variant(star, "driver", "never"), run_date=DAY))
    scans = {n.table: n for n in plan.nodes() if isinstance(n, Scan)}
    for table in ("dim_a", "dim_b", "dim_c"):
        frame = _scan(spark, scans[table])
        direct = read_on_driver(scans[table], frame.schema)
        assert direct is not None, table
        by_spark = frame.toArrow()
        assert direct.schema.equals(by_spark.schema), table
        key = frame.columns[0]
        assert direct.sort_by(key).equals(by_spark.sort_by(key)), table
    filtered = replace(scans["dim_b"], predicate="b0 > 0")
    assert read_on_driver(filtered, _scan(spark, filtered).schema) is None  # Spark filters
