"""Bad inputs: one clear line naming the culprit, a non-zero exit code, and nothing written.

Each case edits the demo spec (or its files) and runs the real CLI entry point in-process, so
the shared SparkSession is reused.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchscore.cli import run_cli

pytestmark = pytest.mark.spark

RUN_DATE = "2026-11-21"


def _edit(root: Path, old: str, new: str) -> Path:
    spec = root / "conf" / "demo.yaml"
    text = spec.read_text()
    assert old in text, old
    spec.write_text(text.replace(old, new, 1))
    return spec


def _corrupt_model(root: Path) -> Path:
    model = root / "models" / "revenue_glm.joblib"
    model.write_bytes(model.read_bytes()[:100])
    import hashlib

    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    text = (root / "conf" / "demo.yaml").read_text()
    start = text.index("sha256: ") + len("sha256: ")
    return _edit(root, text[start : start + 64], digest)


def _dimension_as_delta(root: Path) -> Path:
    return _edit(root, "format: parquet", "format: delta")


def _duplicate_key(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "data" / "stores"
    table = pq.read_table(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), folder / "part-0.parquet")
    return root / "conf" / "demo.yaml"


def _string_feature(root: Path) -> Path:
    return _edit(
        root,
        "features: [price, quantity, stores.size_sqm",
        "features: [ds, quantity, stores.size_sqm",
    )


CASES: dict[str, tuple[Callable[[Path], Path], list[str], int, str]] = {
    "unknown-spec-key": (lambda r: _edit(r, "  output: predict\n", "  outptu: predict\n"), [], 2, r"unknown key 'outptu'.*Did you mean 'output'"),
    "missing-table-path": (lambda r: _edit(r, "../data/stores", "../data/storez"), [], 2, r"Table 'stores': path .*storez' does not exist"),
    "unknown-feature": (lambda r: _edit(r, "stores.size_sqm, stores.region", "stores.size_sq, stores.region"), [], 2, r"stores.size_sq.*no column 'size_sq'.*Did you mean 'size_sqm'"),
    "feature-count": (lambda r: _edit(r, "features: [price, quantity, stores.size_sqm", "features: [quantity, stores.size_sqm"), [], 2, r"revenue_glm.*expects 22 inputs"),
    "sha256-mismatch": (lambda r: _edit(r, "sha256: ", "sha256: 00"), [], 2, r"revenue_glm.*sha256"),
    "unpinned-pickle": (lambda r: _edit(r, "  sha256: ", "  # sha256: "), [], 2, r"revenue_glm.*no sha256 pin"),
    "corrupt-model": (_corrupt_model, [], 2, r"revenue_glm.*cannot be loaded"),
    "parquet-given-as-delta": (_dimension_as_delta, [], 2, r"'stores'.*is not a Delta table.*format: parquet"),
    "join-key-missing": (lambda r: _edit(r, "on: {store_id: store_id}", "on: {store_id: shop_id}"), [], 2, r"key column 'shop_id' is not in table 'stores'"),
    "malformed-yaml": (lambda r: _edit(r, "joins:\n", "joins: [\n"), [], 2, r"malformed YAML"),
    "run-date-missing": (lambda r: r / "conf" / "demo.yaml", ["--no-date"], 2, r"uses \{run_date\} but no run date was given"),
    "bad-run-date": (lambda r: r / "conf" / "demo.yaml", ["--run-date", "yesterday"], 2, r"Run date 'yesterday' is not a date"),
    "duplicate-dimension-key": (_duplicate_key, [], 2, r"Dimension table 'stores' has 2 rows for key store_id="),
    "string-feature": (_string_feature, [], 2, r"Feature 'ds' of model 'revenue_glm' is a string column"),
    "unknown-where-column": (lambda r: _edit(r, "where: \"ds = ", "where: \"day = "), [], 2, r"uses column 'day' that table 'sales' does not have"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_fails_cleanly(
    case: str, job: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    make, extra, code, message = CASES[case]
    spec = make(job)
    date = [] if extra == ["--no-date"] else (extra or ["--run-date", RUN_DATE])
    assert run_cli(["run", str(spec), *date]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    import re

    assert re.search(message, err), err
    assert not (job / "out").exists()


def test_output_schema_change_is_refused(
    job: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    spec = job / "conf" / "demo.yaml"
    assert run_cli(["run", str(spec), "--run-date", "2026-11-20"]) == 0
    out = job / "out" / "predictions"
    before = sorted(p.name for p in out.rglob("*"))
    _edit(job, "layout: long", "layout: wide")
    assert run_cli(["run", str(spec), "--run-date", RUN_DATE]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "revenue_glm__prediction" in err or "model" in err, err
    assert sorted(p.name for p in out.rglob("*")) == before


def test_empty_partition_selection_exits_zero_and_writes_nothing(
    job: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    assert run_cli(["run", str(job / "conf" / "demo.yaml"), "--run-date", "1999-01-01"]) == 0
    out = capsys.readouterr().out
    assert "no partition matching" in out and "no commit made" in out
    assert not (job / "out").exists()
