"""The planner and the Delta reader select the same partitions for the same filters.

The planner's catalog (plan/catalog.py) decides whether a run has anything to score; the reader
(sinks/snapshot.py, behind the data source and the native scan) decides what is read. Both ask
the one evaluator, which compares partition values by the column's type: on a string column
'10' < '9' (as Spark compares strings), on an integer column 10 > 9.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from batchscore.errors import SinkError
from batchscore.plan.catalog import describe_table, inferred_partition_type
from batchscore.plan.predicates import partition_filters
from batchscore.sinks.snapshot import load_snapshot
from batchscore.spec.model import TableSpec

VALUES = [10, 9, 2]
DAYS = [date(2026, 11, 9), date(2026, 11, 10), date(2026, 12, 1)]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("partitions")
    columns = {
        "text": pa.array([str(v) for v in VALUES], pa.string()),
        "number": pa.array(VALUES, pa.int64()),
        "day": pa.array(DAYS, pa.date32()),
    }
    out = {}
    for name, column in columns.items():
        path = root / name
        data = pa.table({"p": column, "value": pa.array([1.0, 2.0, 3.0])})
        write_deltalake(str(path), data, partition_by=["p"])
        out[name] = path
    return out


def _planner(path: Path, where: str) -> set[str | None]:
    info = describe_table("t", TableSpec(path=str(path)))
    filters = partition_filters(where, info.partition_columns)
    assert filters, where
    return {f[1]["p"] for f in info.select_files(filters)}


def _reader(path: Path, where: str) -> set[str | None]:
    filters = partition_filters(where, ["p"])
    snapshot = load_snapshot(str(path), partition_filters=[list(f) for f in filters])
    return {f.partition_values["p"] for f in snapshot.files}


CASES = {
    "text": {
        "p < '9'": {"10", "2"},  # strings: '10' < '9'
        "p > '9'": set(),
        "p >= '10'": {"10", "2", "9"},
        "p = '10'": {"10"},
        "p != '9'": {"10", "2"},
        "p in ('9', '2')": {"9", "2"},
        "p between '1' and '5'": {"10", "2"},
    },
    "number": {
        "p < 9": {"2"},  # numbers: 10 > 9
        "p > 9": {"10"},
        "p >= 9": {"10", "9"},
        "p = 10": {"10"},
        "p != 9": {"10", "2"},
        "p in (9, 2)": {"9", "2"},
        "p between 1 and 5": {"2"},
    },
    "day": {
        "p < '2026-11-10'": {"2026-11-09"},
        "p >= '2026-11-10'": {"2026-11-10", "2026-12-01"},
        "p = '2026-12-01'": {"2026-12-01"},
        "p in ('2026-11-09', '2026-12-01')": {"2026-11-09", "2026-12-01"},
        "p between '2026-11-10' and '2026-11-30'": {"2026-11-10"},
    },
}


@pytest.mark.parametrize(
    ("kind", "where"), [(kind, where) for kind, cases in CASES.items() for where in cases]
)
def test_planner_and_reader_select_the_same_partitions(
    tables: dict[str, Path], kind: str, where: str
) -> None:
    expected = CASES[kind][where]
    assert _reader(tables[kind], where) == expected
    assert _planner(tables[kind], where) == expected


def test_nothing_to_score_agrees_with_the_reader(tables: dict[str, Path]) -> None:
    """The planner's "no partition matches" (jobs/run.py exits 0 on it) is the reader's."""
    path = tables["text"]
    assert _planner(path, "p > '9'") == _reader(path, "p > '9'") == set()
    assert _planner(path, "p < '9'") == _reader(path, "p < '9'") != set()


def test_a_value_that_is_not_of_the_column_type_fails_in_both(tables: dict[str, Path]) -> None:
    for select in (_planner, _reader):
        with pytest.raises(SinkError, match="does not parse as the type date of column 'p'"):
            select(tables["day"], "p = 'soon'")


def test_parquet_partition_types_follow_sparks_inference() -> None:
    assert inferred_partition_type(["10", "9", None]) == "long"
    assert inferred_partition_type(["1.5", "10"]) == "double"
    assert inferred_partition_type(["2026-11-09", "2026-12-01"]) == "date"
    assert inferred_partition_type(["2026-13-45"]) == "string"
    assert inferred_partition_type(["10", "a"]) == "string"
    assert inferred_partition_type([None]) == "string"


def test_parquet_table_selection_compares_inferred_numbers(tmp_path: Path) -> None:
    for value in VALUES:
        folder = tmp_path / "pq" / f"p={value}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"value": [1.0]}), folder / "part-0.parquet")
    info = describe_table("t", TableSpec(path=str(tmp_path / "pq"), format="parquet"))
    chosen = info.select_files(partition_filters("p < 9", ["p"]))
    assert {f[1]["p"] for f in chosen} == {"2"}


def test_the_snapshot_module_needs_no_spark() -> None:
    """The planner imports the evaluator: neither it nor the catalog may pull in pyspark."""
    code = (
        "import sys, batchscore.sinks.snapshot, batchscore.plan.catalog\n"
        "assert not [m for m in sys.modules if m.startswith('pyspark')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
