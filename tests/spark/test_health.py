"""Model health end to end (issue 14): profiles, validation in the pass, monitoring table, alerts.

One star (tests/health.py) with a reference day, a stable day and a day with four injected
drifts; the models are profiled on the reference day with `batchscore profile`, then runs are
checked through the CLI (exit codes, --summary-json) and the Delta tables they leave.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from deltalake import DeltaTable

from batchscore.api import history
from batchscore.cli import run_cli
from batchscore.monitor.profile import Profile
from tests.health import DRIFTED, DRIFTING, REFERENCE, STABLE, build_health_star, spec_text

pytestmark = pytest.mark.spark
PROFILED = "    profile: profiles/{name}\n"


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> Path:
    """The star with both models profiled on the reference day (by the CLI)."""
    root = tmp_path_factory.mktemp("health")
    star = build_health_star(root, rows=10_000)
    out = root / "profiles"
    assert run_cli(["profile", str(star.spec), "--run-date", REFERENCE, "--out", str(out)]) == 0
    return root


def _copy(profiled: Path, tmp_path: Path, *, extra: str = "", model_extra: str = "") -> Path:
    root = tmp_path / "job"
    shutil.copytree(profiled, root, ignore=shutil.ignore_patterns("out", "held", "mon", "*.yaml"))
    text = spec_text(root, extra=extra, model_extra=model_extra)
    for name in ("risk", "spend"):
        text = text.replace(
            f"  - name: {name}\n", f"  - name: {name}\n{PROFILED.format(name=name)}"
        )
    (root / "job.yaml").write_text(text)
    return root / "job.yaml"


def _run(spec: Path, day: str, *args: str) -> int:
    return run_cli(["run", str(spec), "--run-date", day, "--quiet", *args])


def _monitoring(root: Path) -> pd.DataFrame:
    return DeltaTable(str(root / "mon")).to_pandas()


def test_profile_describes_each_model_input_and_prediction(profiled: Path) -> None:
    risk = Profile.load(profiled / "profiles" / "risk")
    assert risk.rows == 10_000
    assert list(risk.features) == [
        "sales.f_stable", "sales.f_shift", "sales.f_null", "sales.f_cat", "sales.f_unit",
        "stores.size", "stores.region_vec[0]", "stores.region_vec[1]", "stores.region_vec[2]",
    ]  # fmt: skip
    cat = risk.features["sales.f_cat"]
    assert set(cat.categories) == {"0", "1", "2", "3"} and cat.nulls == 0
    assert set(risk.predictions) == {"prediction", "label"}
    assert Profile.load(profiled / "profiles" / "spend").predictions["prediction"].count == 10_000


def test_drift_flags_exactly_the_injected_features(profiled: Path, tmp_path: Path) -> None:
    spec = _copy(profiled, tmp_path, extra="monitoring: {table: mon}\n")
    summary = tmp_path / "summary.json"
    assert _run(spec, STABLE, "--summary-json", str(summary)) == 0
    assert json.loads(summary.read_text())["alert"] == ""
    assert _run(spec, DRIFTED, "--summary-json", str(summary)) == 0  # on_alert: warn
    table = _monitoring(spec.parent)
    assert set(table.columns) >= {
        "run_id", "job", "run_date", "model", "model_version", "kind", "feature", "metric",
        "value", "baseline", "threshold", "alert", "computed_at",
    }  # fmt: skip
    key = ["run_id", "model", "kind", "feature", "metric", "baseline"]
    assert not table.duplicated(key).any()
    alerts = table[table["alert"]]
    assert alerts[alerts["run_date"] == STABLE].empty
    drifted = alerts[(alerts["run_date"] == DRIFTED) & (alerts["kind"] == "feature")]
    for baseline in ("training", "previous"):
        flagged = set(drifted.loc[drifted["baseline"] == baseline, "feature"])
        assert flagged == DRIFTING, baseline
    body = json.loads(summary.read_text())
    assert body["alert"].startswith("Drift alert: model ")
    assert body["monitoring"]["alerts"] and body["exit_code"] == 0
    region = table[table["feature"].str.startswith("stores.region_vec[")]
    assert set(region["feature"]) == {f"stores.region_vec[{i}]" for i in range(3)}
    page = tmp_path / "report.html"
    report = ["report", "--monitoring", str(spec.parent / "mon"), "--job", "health"]
    assert run_cli([*report, "--out", str(page)]) == 0
    html = page.read_text()
    assert "sales.f_shift" in html and html.count("<img") >= 4


def test_rerun_replaces_the_runs_metrics(profiled: Path, tmp_path: Path) -> None:
    spec = _copy(profiled, tmp_path, extra="monitoring: {table: mon}\n")
    assert _run(spec, STABLE) == 0
    first = _monitoring(spec.parent)
    assert _run(spec, STABLE, "--force") == 0
    second = _monitoring(spec.parent)
    assert len(second) == len(first)
    assert second["run_id"].nunique() == 1 and set(second["run_id"]) != set(first["run_id"])


def test_alert_with_on_alert_fail_commits_then_exits_3(profiled: Path, tmp_path: Path) -> None:
    spec = _copy(profiled, tmp_path, extra="monitoring: {table: mon, on_alert: fail}\n")
    assert _run(spec, DRIFTED) == 3
    out = DeltaTable(str(spec.parent / "out")).to_pandas()
    assert len(out) == 2 * 10_000
    assert _monitoring(spec.parent)["alert"].any()


def test_quarantine_rules_account_for_every_row(profiled: Path, tmp_path: Path) -> None:
    spec = _copy(
        profiled,
        tmp_path,
        extra=(
            "validation:\n  actions: {domain: quarantine}\n  rules:\n"
            "    - {name: no_outliers, expr: 'sales.f_shift < 2.5', action: quarantine}\n"
        ),
    )
    summary = tmp_path / "summary.json"
    assert _run(spec, DRIFTED, "--summary-json", str(summary)) == 0
    body = json.loads(summary.read_text())
    held = DeltaTable(str(spec.parent / "held")).to_pandas()
    out = DeltaTable(str(spec.parent / "out")).to_pandas()
    assert body["quarantined"] == len(held) > 0
    assert len(set(out["id"])) + len(held) == 10_000
    assert not set(out["id"]) & set(held["id"])
    reasons = held["reason"]
    assert reasons.str.contains("domain sales.f_cat: sales.f_cat = 9.0").sum() > 1000
    assert reasons.str.contains(r"no_outliers: sales.f_shift=\d", regex=True).any()
    assert set(body["validation"]) >= {"domain sales.f_cat", "no_outliers", "range sales.f_unit"}
    assert any("null rate of sales.f_null" in w for w in body["warnings"])
    assert any("range sales.f_unit" in w for w in body["warnings"])


def test_fail_rule_exits_2_and_commits_nothing(
    profiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = (
        "validation:\n  rules:\n"
        "    - {name: small_amounts, expr: 'sales.f_unit < 5000', action: fail}\n"
    )
    spec = _copy(profiled, tmp_path, extra=rule)
    assert _run(spec, DRIFTED) == 2
    err = capsys.readouterr().err
    assert "Validation rule 'small_amounts' (fail): 9,99" in err and "nothing committed" in err
    assert "e.g. sales.f_unit=" in err
    assert not (spec.parent / "out").exists()
    assert _run(spec, STABLE) == 0


@pytest.mark.parametrize(
    ("extra", "model_extra", "message"),
    [
        (
            "monitoring: {table: mon, thresholds: {pis: 0.2}}\n",
            "",
            "'pis' is not a drift metric. Did you mean 'psi'?",
        ),
        ("monitoring: {table: mon, thresholds: {ks: 1.5}}\n", "", "ks"),
        ("validation: {tolerance: 0.2}\n", "", "has no training profile"),
    ],
)
def test_bad_health_settings_fail_in_one_line(
    profiled: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: str,
    model_extra: str,
    message: str,
) -> None:
    spec = _copy(profiled, tmp_path, extra=extra, model_extra=model_extra)
    if "no training profile" in message:
        text = spec.read_text().replace("    profile: profiles/risk\n", "")
        spec.write_text(text)
    assert _run(spec, STABLE) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_profile_of_another_models_features_is_refused(
    profiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    Profile.load(profiled / "profiles" / "risk")
    table = tmp_path / "flat"
    pd.DataFrame({"age": [1.0, 2.0, 3.0], "income": [3.0, 4.0, 5.0]}).to_parquet(
        table.with_suffix(".parquet")
    )
    table.mkdir()
    shutil.move(str(table.with_suffix(".parquet")), table / "part-0.parquet")
    assert (
        run_cli(["profile", "--data", str(table), "--features", "age,income", "--out", str(other)])
        == 0
    )
    assert set(Profile.load(other).features) == {"age", "income"}
    spec = _copy(profiled, tmp_path)
    spec.write_text(spec.read_text().replace("profiles/risk", str(other)))
    assert _run(spec, STABLE) == 2
    err = capsys.readouterr().err
    assert "does not describe model 'risk'" in err and "sales.f_stable" in err


def test_a_registry_model_uses_its_registered_profile_and_sql_reads_the_table(
    profiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """`models register --training-data` stores the same profile format; a `registry:` model
    without `profile:` is monitored against it; `batchscore sql` reads the monitoring table."""
    sales = DeltaTable(str(profiled / "sales")).to_pandas()
    stores = DeltaTable(str(profiled / "stores")).to_pandas()
    train = sales[sales["ds"] == REFERENCE].merge(stores, on="store_id")
    flat = tmp_path / "train"
    flat.mkdir()
    train.drop(columns=["ds", "id", "store_id"]).to_parquet(flat / "part-0.parquet")
    store = tmp_path / "registry"
    monkeypatch.setenv("BATCHSCORE_MODEL_STORE", str(store))
    model = profiled / "models" / "spend.joblib"
    assert run_cli(["models", "register", "spend", str(model), "--training-data", str(flat)]) == 0
    spec = _copy(profiled, tmp_path, extra="monitoring: {table: mon}\n")
    text = spec.read_text().replace("    profile: profiles/spend\n", "")
    text = text.replace("path: models/spend.joblib", "path: registry:spend@latest")
    spec.write_text(text)
    assert _run(spec, DRIFTED) == 0
    lineage = history(spec.parent / "out")[0]["metadata"]["batchscore.models"]
    lineage = json.loads(lineage) if isinstance(lineage, str) else lineage
    assert lineage["spend"]["registry"] == "registry:spend@1"  # the version that served
    table = _monitoring(spec.parent)
    spend = table[(table["model"] == "spend") & table["alert"] & (table["kind"] == "feature")]
    assert set(spend.loc[spend["baseline"] == "training", "feature"]) == DRIFTING
    capsys.readouterr()
    query = "SELECT count(*) AS n FROM mon WHERE alert AND baseline = 'training'"
    assert run_cli(["sql", query, "--table", f"mon={spec.parent / 'mon'}"]) == 0
    assert (
        str(int(table[table["baseline"] == "training"]["alert"].sum())) in capsys.readouterr().out
    )


def test_a_changed_column_type_warns_or_fails_before_spark(
    profiled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The profile says sales.f_cat held strings; the table holds integers now."""
    spec = _copy(profiled, tmp_path, extra="validation: {actions: {type: fail}}\n")
    for name in ("risk", "spend"):
        path = spec.parent / "profiles" / name / "profile.json"
        body = json.loads(path.read_text())
        for feature in body["features"]:
            if feature["feature"] == "sales.f_cat":
                feature["dtype"] = "string"
        path.write_text(json.dumps(body))
    assert _run(spec, STABLE) == 2
    err = capsys.readouterr().err
    assert "Validation rule 'type sales.f_cat'" in err and "is int64 now, not string" in err
    summary = tmp_path / "summary.json"
    spec.write_text(spec.read_text().replace("{type: fail}", "{type: warn}"))
    assert _run(spec, STABLE, "--summary-json", str(summary)) == 0
    warnings = json.loads(summary.read_text())["warnings"]
    assert any("type sales.f_cat" in w for w in warnings)
