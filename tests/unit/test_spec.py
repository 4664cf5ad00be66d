"""The job spec: the contract's example parses, and every mistake names the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscore.errors import SpecError
from batchscore.spec import load_spec, parse_spec, with_run_date

CONTRACT_EXAMPLE = """\
name: walmart_weekly
tables:
  sales:   {path: data/sales,   format: delta, partition_by: [ds]}
  stores:  {path: data/stores,  format: parquet, key: store_id}
  depts:   {path: data/depts,   format: delta,   key: dept_id}
source:
  table: sales
  where: "ds = '{run_date}'"
  joins:
    - {table: stores, on: {store_id: store_id}}
    - {table: depts,  on: {dept_id: dept_id}}
  id_columns: [sale_id, ds]
models:
  - name: dept_class
    path: models/dept_class.joblib
    sha256: "abc"
    features: [size, stores.onehot, depts.category_vec]
    output: predict_proba
output:
  path: out/predictions
  layout: long
  partition_by: [ds]
  mode: overwrite_partitions
planner:
  factorize: auto
  batch_models: true
"""


def test_contract_example_parses(tmp_path: Path) -> None:
    spec = parse_spec(CONTRACT_EXAMPLE, base_dir=tmp_path, run_date="2026-11-21")
    assert spec.name == "walmart_weekly"
    assert spec.source.joins[0].on == {"store_id": "store_id"}  # unquoted `on` stays a key
    assert spec.source.where == "ds = '2026-11-21'"
    assert spec.tables["sales"].path == str(tmp_path / "data/sales")
    assert spec.models[0].path == str(tmp_path / "models/dept_class.joblib")
    assert spec.output.path == str(tmp_path / "out/predictions")
    assert spec.planner.factorize == "auto"
    assert len(spec.spec_hash) == 64


def test_relative_paths_resolve_against_the_spec_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "job.yaml").write_text(CONTRACT_EXAMPLE)
    monkeypatch.chdir("/")
    spec = load_spec(conf / "job.yaml", run_date="2026-11-21")
    assert spec.tables["stores"].path == str(conf / "data/stores")


def test_uris_are_kept_as_they_are(tmp_path: Path) -> None:
    text = CONTRACT_EXAMPLE.replace("path: data/sales,", "path: 's3://bucket/sales',")
    spec = parse_spec(text, base_dir=tmp_path, run_date="2026-11-21")
    assert spec.tables["sales"].path == "s3://bucket/sales"


def test_run_date_can_come_later(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(CONTRACT_EXAMPLE)
    spec = load_spec(tmp_path / "job.yaml")
    assert spec.pending_placeholder
    dated = with_run_date(spec, "2026-11-22")
    assert dated.source.where == "ds = '2026-11-22'"
    with pytest.raises(SpecError, match=r"uses \{run_date\} but no run date was given.*--run-date"):
        with_run_date(spec, None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("    features:", "    featurs:"),
            r"line 17: unknown key 'featurs' in models\[0\]\. Did you mean 'features'\?",
        ),
        (("planner:", "planer:"), r"unknown key 'planer'.*Did you mean 'planner'\?"),
        (
            ("  layout: long", "  layout: tall"),
            r"invalid value 'tall' for 'output.layout'; use one of 'long', 'wide'",
        ),
        (
            ("  table: sales", "  table: sale"),
            r"source table 'sale' is not declared.*Did you mean 'sales'\?",
        ),
        (
            ("{table: depts,", "{table: dept,"),
            r"joined table 'dept' is not declared.*Did you mean 'depts'\?",
        ),
        (
            ("  partition_by: [ds]\n  mode", "  partition_by: [day]\n  mode"),
            r"'day' is not among source.id_columns",
        ),
        (("name: walmart_weekly\n", ""), r"missing required key 'name'"),
        (
            ("where: \"ds = '{run_date}'\"", "where: \"ds = '{rundate}'\""),
            r"unknown placeholder '\{rundate\}'",
        ),
    ],
    ids=[
        "typo-model-key",
        "typo-section",
        "bad-enum",
        "unknown-source",
        "unknown-join",
        "partition-not-id",
        "missing-name",
        "bad-placeholder",
    ],
)
def test_mistakes_name_the_key_and_the_fix(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = CONTRACT_EXAMPLE.replace(*edit)
    assert text != CONTRACT_EXAMPLE
    with pytest.raises(SpecError, match=message):
        parse_spec(text, base_dir=tmp_path, run_date="2026-11-21")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"line \d+, column \d+: malformed YAML"):
        parse_spec(CONTRACT_EXAMPLE.replace("joins:\n", "joins: [\n", 1), base_dir=tmp_path)


def test_bad_run_date_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="YYYY-MM-DD"):
        parse_spec(CONTRACT_EXAMPLE, base_dir=tmp_path, run_date="21/11/2026")


def test_missing_spec_file() -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec("/nonexistent/job.yaml")


def test_spec_hash_tracks_content(tmp_path: Path) -> None:
    a = parse_spec(CONTRACT_EXAMPLE, base_dir=tmp_path, run_date="2026-11-21")
    b = parse_spec(
        CONTRACT_EXAMPLE.replace("layout: long", "layout: wide"),
        base_dir=tmp_path,
        run_date="2026-11-21",
    )
    assert a.spec_hash != b.spec_hash
