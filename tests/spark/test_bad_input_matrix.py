"""The bad-input matrix: every way a job's input can be wrong, one refusal each.

Each case breaks a private copy of the demo job, runs the real CLI in-process
(`batchscore.cli.run_cli`, sharing the suite's SparkSession; most cases fail before Spark
starts) and asserts: the exit code, exactly one `error:` line on stderr naming the culprit and
the fix, no traceback, and nothing written (no output folder) or, for the runtime case, the
table left at its previous version.

The cases (CASES below), by kind:
  spec     unknown keys with did-you-mean (a model key, output, tables), invalid enum values
           named with the value given (output.mode, output.layout, joins[].on_missing,
           planner.factorize, models[].output), duplicate model names, an unknown feature, a
           join key that is not a column, malformed YAML, a missing or malformed --run-date, an
           unclosed placeholder, a where clause on a missing column
  data     a Parquet table given as Delta, duplicate keys in a Parquet and in a Delta
           dimension, a string column used as a feature, empty strings in a numeric column, type
           drift of a feature column across the files of a table, a foreign (non-Parquet) file
           in a table folder
  models   wrong input count, a sha256 mismatch, an unpinned pickle, a pickle that would run
           code without a pin (the code never runs) and with a wrong pin, a damaged model, a
           damaged LightGBM text model, an unsupported object, a missing model file
  paths    a missing table path, output path that is a file, quarantine = output, output
           inside an input table, a missing spec file, unreadable input (skipped: the suite
           runs as root)
  runtime  a write that fails half-way (its partition folder cannot be created): the table
           stays at its previous version and the rerun completes
Not refusals, by design (test_null_keys_and_nan_are_scored_null_and_counted): null fact keys,
NaN and inf in features: the rows are scored null and counted per model and reason in the
summary (tests/spark/test_null_accounting.py has the exact counts).

Cases elsewhere: tests/spark/test_bad_inputs.py (a schema change of the output table refused with
the table untouched; an empty partition selection, exit 0, nothing written), tests/unit/test_spec.py
(spec mistakes at the loader), tests/unit/test_model_errors.py, tests/spark/test_ownership.py (foreign
folders, output = input, symlinks, vacuum), tests/spark/test_cluster_errors.py (unreachable master,
no workers, broken worker Python), tests/spark/test_crash_safety.py (kill -9 mid-run).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchscore.cli import run_cli
from batchscore.jobs.progress import without_stage_lines

pytestmark = pytest.mark.spark

RUN_DATE = "2026-11-21"


def _spec(root: Path) -> Path:
    return root / "conf" / "demo.yaml"


def _edit(root: Path, old: str, new: str) -> None:
    spec = _spec(root)
    text = spec.read_text()
    assert old in text, old
    spec.write_text(text.replace(old, new, 1))


def edit(old: str, new: str) -> Callable[[Path], None]:
    return lambda root: _edit(root, old, new)


def _pin(root: Path, model: str, path: Path) -> None:
    """Point `model` at `path`, pinned to its sha256."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    text = _spec(root).read_text()
    start = text.index(f"- name: {model}")
    block_end = text.find("\n- name:", start + 1)
    block_end = len(text) if block_end < 0 else block_end
    block = text[start:block_end]
    block = re.sub(r"path: \S+", f"path: {path}", block)
    block = re.sub(r"sha256: \S+", f"sha256: {digest}", block)
    _spec(root).write_text(text[:start] + block + text[block_end:])


# --- data ------------------------------------------------------------------------------------


def _type_drift(root: Path) -> None:
    path = root / "data" / "stores" / "part-00001.parquet"
    table = pq.read_table(path)
    index = table.schema.get_field_index("size_sqm")
    pq.write_table(
        table.set_column(index, "size_sqm", pc.cast(table["size_sqm"], pa.string())), path
    )


def _foreign_file(root: Path) -> None:
    (root / "data" / "stores" / "notes.txt").write_text("stores exported by hand\n")


def _empty_strings(root: Path) -> None:
    folder = root / "data" / "stores"
    table = pq.read_table(folder)
    values = [("" if i % 5 == 0 else str(v)) for i, v in enumerate(table["footfall"].to_pylist())]
    table = table.set_column(table.schema.get_field_index("footfall"), "footfall", pa.array(values))
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(table, folder / "part-0.parquet")


def _duplicate_delta_key(root: Path) -> None:
    from deltalake import DeltaTable, write_deltalake

    path = str(root / "data" / "products")
    table = DeltaTable(path).to_pyarrow_table()
    write_deltalake(path, table.slice(0, 1), mode="append")


# --- models ----------------------------------------------------------------------------------


class _Touch:
    """A pickle whose loading creates a file: what a malicious artifact would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


def _code_pickle(root: Path, *, pin: str | None) -> None:
    path = root / "models" / "evil.joblib"
    path.write_bytes(pickle.dumps(_Touch(root / "PWNED")))
    text = _spec(root).read_text()
    start = text.index("- name: revenue_glm")
    end = text.index("\n- name:", start + 1)
    block = re.sub(r"path: \S+", f"path: {path}", text[start:end])
    if pin is None:
        block = re.sub(r"\n\s+sha256: \S+", "", block)
    else:
        block = re.sub(r"sha256: \S+", f"sha256: {pin}", block)
    _spec(root).write_text(text[:start] + block + text[end:])


def _unsupported(root: Path) -> None:
    path = root / "models" / "table.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    _pin(root, "revenue_glm", path)


def _damaged_lightgbm(root: Path) -> None:
    path = root / "models" / "return_risk.txt"
    text = path.read_text()
    path.write_text(text.replace("num_leaves=", "num_leaves=x", 1))


# --- paths -----------------------------------------------------------------------------------


def _output_is_a_file(root: Path) -> None:
    (root / "out").mkdir()
    (root / "out" / "predictions").write_text("not a folder\n")


@dataclass(frozen=True)
class Case:
    kind: str
    make: Callable[[Path], None]
    code: int
    message: str
    argv: tuple[str, ...] = ("--run-date", RUN_DATE)
    keep_out: bool = False
    """The case itself puts something under out/ (checked unchanged instead of absent)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _corrupt_model(root: Path) -> None:
    model = root / "models" / "revenue_glm.joblib"
    model.write_bytes(model.read_bytes()[:100])
    import hashlib

    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    text = (root / "conf" / "demo.yaml").read_text()
    start = text.index("sha256: ") + len("sha256: ")
    _edit(root, text[start : start + 64], digest)


def _dimension_as_delta(root: Path) -> None:
    _edit(root, "format: parquet", "format: delta")


def _duplicate_key(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "data" / "stores"
    table = pq.read_table(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), folder / "part-0.parquet")


def _string_feature(root: Path) -> None:
    _edit(
        root,
        "features: [price, quantity, stores.size_sqm",
        "features: [ds, quantity, stores.size_sqm",
    )


CASES: dict[str, Case] = {
    # spec
    "unknown-spec-key": Case("spec", edit("  output: predict\n", "  outptu: predict\n"), 2, r"unknown key 'outptu'.*Did you mean 'output'"),
    "unknown-feature": Case("spec", edit("stores.size_sqm, stores.region", "stores.size_sq, stores.region"), 2, r"stores.size_sq.*no column 'size_sq'.*Did you mean 'size_sqm'"),
    "join-key-missing": Case("spec", edit("on: {store_id: store_id}", "on: {store_id: shop_id}"), 2, r"key column 'shop_id' is not in table 'stores'"),
    "malformed-yaml": Case("spec", edit("joins:\n", "joins: [\n"), 2, r"malformed YAML"),
    "run-date-missing": Case("spec", lambda r: None, 2, r"uses \{run_date\} but no run date was given", argv=()),
    "bad-run-date": Case("spec", lambda r: None, 2, r"Run date 'yesterday' is not a date", argv=("--run-date", "yesterday")),
    "unknown-feature-table": Case("spec", edit("stores.size_sqm, stores.region", "stors.size_sqm, stores.region"), 2, r"names table 'stors', which is not in the job's source or joins. Did you mean 'stores'"),
    "unknown-where-column": Case("spec", edit("where: \"ds = ", "where: \"day = "), 2, r"uses column 'day' that table 'sales' does not have"),
    # data
    "parquet-given-as-delta": Case("data", _dimension_as_delta, 2, r"'stores'.*is not a Delta table.*format: parquet"),
    "duplicate-dimension-key": Case("data", _duplicate_key, 2, r"Dimension table 'stores' has 2 rows for key store_id="),
    "string-feature": Case("data", _string_feature, 2, r"Feature 'ds' of model 'revenue_glm' is a string column"),
    # models
    "feature-count": Case("models", edit("features: [price, quantity, stores.size_sqm", "features: [quantity, stores.size_sqm"), 2, r"revenue_glm.*expects 22 inputs"),
    "sha256-mismatch": Case("models", edit("sha256: ", "sha256: 00"), 2, r"revenue_glm.*sha256"),
    "unpinned-pickle": Case("models", edit("  sha256: ", "  # sha256: "), 2, r"revenue_glm.*no sha256 pin"),
    "corrupt-model": Case("models", _corrupt_model, 2, r"revenue_glm.*cannot be loaded"),
    "model-path-is-a-folder": Case("models", edit("../models/return_risk.txt", "../models"), 2, r"Model 'return_risk' .* is a folder, not a model file; point path: at the saved model"),
    # paths
    "missing-table-path": Case("paths", edit("../data/stores", "../data/storez"), 2, r"Table 'stores': path .*storez' does not exist"),
    # spec
    "enum-output-mode": Case("spec", edit("mode: overwrite_partitions", "mode: upsert_all"), 2, r"invalid value 'upsert_all' for 'output.mode'; use one of 'append', 'overwrite_partitions'"),
    "enum-layout": Case("spec", edit("layout: long", "layout: tall"), 2, r"invalid value 'tall' for 'output.layout'; use one of 'long', 'wide'"),
    "enum-on-missing": Case("spec", edit("on: {store_id: store_id}}", "on: {store_id: store_id}, on_missing: drop}"), 2, r"invalid value 'drop' for 'source.joins\[0\].on_missing'; use one of 'null', 'quarantine'"),
    "enum-factorize": Case("spec", edit("factorize: auto", "factorize: sometimes"), 2, r"invalid value 'sometimes' for 'planner.factorize'; use one of 'auto', 'always', 'never'"),
    "enum-model-output": Case("spec", edit("output: predict\n", "output: predicted\n"), 2, r"invalid value 'predicted' for 'models\[0\].output'; use one of .*'predict'.*Did you mean 'predict'"),
    "unknown-output-key": Case("spec", edit("  layout: long", "  layot: long"), 2, r"unknown key 'layot'.*Did you mean 'layout'"),
    "unknown-table-key": Case("spec", edit("format: parquet, key: store_id", "format: parquet, kye: store_id"), 2, r"unknown key 'kye'.*Did you mean 'key'"),
    "duplicate-model-name": Case("spec", edit("- name: basket_class", "- name: revenue_glm"), 2, r"model name 'revenue_glm' is used twice"),
    "unclosed-template": Case("spec", edit("ds = '{run_date}'", "ds = '{run_date'"), 2, r"unclosed placeholder '\{run_date'; write it as \{run_date\}"),
    # data
    "type-drift-across-files": Case("data", _type_drift, 2, r"Table 'stores': column 'size_sqm' is double in 'part-00000.parquet' but string in 'part-00001.parquet'; rewrite"),
    "foreign-file-in-table-folder": Case("data", _foreign_file, 2, r"Table 'stores': file 'notes.txt' .* is not a readable Parquet file .*move it out"),
    "empty-strings-in-numeric-column": Case("data", _empty_strings, 2, r"Feature 'stores.footfall' of model 'basket_class' is a string column"),
    "duplicate-key-delta-dimension": Case("data", _duplicate_delta_key, 2, r"Dimension table 'products' has 2 rows for key product_id=.*Deduplicate"),
    # models
    "unsupported-object": Case("models", _unsupported, 2, r"Model 'revenue_glm'.*(dict|predict)"),
    "code-pickle-without-pin": Case("models", lambda r: _code_pickle(r, pin=None), 2, r"revenue_glm.*no sha256 pin"),
    "code-pickle-wrong-pin": Case("models", lambda r: _code_pickle(r, pin="f" * 64), 2, r"revenue_glm.*sha256"),
    "damaged-lightgbm-text": Case("models", _damaged_lightgbm, 2, r"return_risk"),
    "missing-model-file": Case("models", edit("../models/return_risk.txt", "../models/return_risc.txt"), 2, r"return_risk.*return_risc.txt.*(does not exist|not found)"),
    # paths
    "output-is-a-file": Case("paths", _output_is_a_file, 4, r"output.path .*predictions is a file, not a folder.*empty or new path", keep_out=True),
    "quarantine-is-output": Case("paths", edit("  mode: overwrite_partitions", "  mode: overwrite_partitions\n  quarantine: ../out/predictions"), 4, r"output.quarantine"),
    "output-inside-input": Case("paths", edit("path: ../out/predictions", "path: ../data/sales/predictions"), 4, r"output.path.*input table 'sales'"),
    "missing-spec-file": Case("paths", lambda r: _spec(r).unlink(), 2, r"demo.yaml"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_bad_input_is_refused(
    name: str, job: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    case = CASES[name]
    case.make(job)
    before = sorted(p.relative_to(job) for p in job.rglob("*"))
    capsys.readouterr()
    code = run_cli(["run", str(_spec(job)), *case.argv])
    captured = capsys.readouterr()
    err = without_stage_lines(captured.err).strip()
    assert code == case.code, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(case.message, err), err
    assert not (job / "PWNED").exists(), "a pickle ran code"
    if not case.keep_out:
        assert not (job / "out").exists()
    assert sorted(p.relative_to(job) for p in job.rglob("*")) == before


def test_unreadable_input() -> None:
    pytest.skip(
        "permission denied cannot be produced here: the suite runs as root, which reads "
        "files whatever their mode"
    )


def test_write_failing_half_way_keeps_the_table_and_the_rerun_completes(
    job: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    from deltalake import DeltaTable

    spec = str(_spec(job))
    assert run_cli(["run", spec, "--run-date", "2026-11-20"]) == 0
    table = job / "out" / "predictions"
    before = sorted(str(p.relative_to(table)) for p in table.rglob("*") if p.is_file())
    blocker = table / f"ds={RUN_DATE}"
    blocker.write_text("a file where the partition folder goes\n")
    capsys.readouterr()
    assert run_cli(["run", spec, "--run-date", RUN_DATE]) == 4
    err = without_stage_lines(capsys.readouterr().err).strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(r"Delta table .*predictions: writing a data file failed", err), err
    assert DeltaTable(str(table)).version() == 0
    after = sorted(
        str(p.relative_to(table))
        for p in table.rglob("*")
        if p.is_file() and p != blocker and "_batchscore/written" not in str(p)
    )
    assert after == [p for p in before if "_batchscore/written" not in p]
    blocker.unlink()
    assert run_cli(["run", spec, "--run-date", RUN_DATE]) == 0
    assert DeltaTable(str(table)).version() == 1
    assert "wrote 9,000 prediction rows" in capsys.readouterr().out


def test_null_keys_and_nan_are_scored_null_and_counted(
    job: Path, capsys: pytest.CaptureFixture[str], spark: Any
) -> None:
    """Not a refusal: a fact row with a null key (no dimension row) and NaN/inf features are
    written with null predictions for the models that cannot score them, and counted."""
    from deltalake import DeltaTable, write_deltalake

    path = str(job / "data" / "sales")
    sales = DeltaTable(path).to_pyarrow_table(filters=[("ds", "=", RUN_DATE)])
    keys = sales["store_id"].to_pylist()
    keys[:7] = [None] * 7
    price = sales["price"].to_numpy().copy()
    price[7:10] = float("nan")
    price[10:12] = float("inf")
    sales = sales.set_column(sales.schema.get_field_index("store_id"), "store_id",
                             pa.array(keys, sales.schema.field("store_id").type))  # fmt: skip
    sales = sales.set_column(sales.schema.get_field_index("price"), "price", pa.array(price))
    write_deltalake(path, sales, mode="overwrite", predicate=f"ds = '{RUN_DATE}'")
    assert run_cli(["run", str(_spec(job)), "--run-date", RUN_DATE]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "error" not in out.err
    assert "revenue_glm:" in out.out and "NaN/inf in sales.price" in out.out, out.out
    assert "missing dimension row" in out.out
