"""`batchscore evaluate` end to end: two committed run dates of the health star (tests/health.py)
with a champion classifier, two shadow challengers and a regressor, a labels table arriving
later, metrics equal to scikit-learn's on the same rows, the monitoring rows, a corrected
labels table replacing them, and bad inputs refused in one line before Spark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from sklearn import metrics as sk

from batchscore.cli import run_cli
from batchscore.datasets._write import sha256_file
from batchscore.jobs.evaluate import evaluate
from tests.health import DRIFTED, FEATURES, STABLE, build_health_star, spec_text

pytestmark = pytest.mark.spark
TOL = 1e-9
NEVER_SCORED = 25  # labels of STABLE ids no run scored
UNDATED = 10  # labels on a date without a run


def _challenger(name: str, root: Path, flat: bool) -> str:
    model = joblib.load(root / "models" / "risk.joblib")
    if flat:
        model.coef_ = np.zeros_like(model.coef_)
    joblib.dump(model, root / "models" / f"{name}.joblib")
    sha = sha256_file(root / "models" / f"{name}.joblib")
    return (
        f"  - name: {name}\n    path: models/{name}.joblib\n    sha256: {sha}\n"
        f"    features: [{', '.join(FEATURES)}]\n    shadow_of: risk\n"
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> Path:
    """The star scored on two dates by `batchscore run`, with shadows risk_same (a copy of
    risk) and risk_flat (no coefficients), and a labels table."""
    root = tmp_path_factory.mktemp("evaluate")
    build_health_star(root, rows=2_000)
    text = spec_text(root, extra="monitoring: {table: mon}\n")
    shadows = _challenger("risk_same", root, False) + _challenger("risk_flat", root, True)
    text = text.replace("output: {", shadows + "output: {", 1)
    (root / "job.yaml").write_text(text)
    for day in (STABLE, DRIFTED):
        assert run_cli(["run", str(root / "job.yaml"), "--run-date", day, "--quiet"]) == 0
    _write_labels(root / "labels", seed=1)
    return root


def _write_labels(path: Path, *, seed: int) -> pd.DataFrame:
    """Labels of 80% of the scored rows, plus ids never scored; rewritten on each call."""
    rng = np.random.default_rng(seed)
    sales = DeltaTable(str(path.parent / "sales")).to_pandas()
    sales = sales[sales["ds"].isin([STABLE, DRIFTED])]
    sales = sales[rng.random(len(sales)) < 0.8]
    signal = sales["f_stable"] + 0.5 * sales["f_shift"] - 0.3 * sales["f_cat"]
    signal = signal + rng.normal(size=len(sales))
    extra = pd.DataFrame(
        {
            "id": np.arange(10**6, 10**6 + NEVER_SCORED + UNDATED, dtype=np.int64),
            "ds": [STABLE] * NEVER_SCORED + ["2026-11-09"] * UNDATED,
        }
    )
    labels = pd.concat(
        [
            pd.DataFrame(
                {"id": sales["id"], "ds": sales["ds"], "defaulted": signal > 0, "amount": signal}
            ),
            extra.assign(defaulted=True, amount=1.0),
        ],
        ignore_index=True,
    )
    labels["seen"] = pd.Timestamp("2026-12-01", tz="UTC")
    write_deltalake(str(path), pa.Table.from_pandas(labels, preserve_index=False), mode="overwrite")
    return labels


def _expected(root: Path, model: str, day: str, column: str) -> dict[str, float]:
    """sklearn's metrics on the rows the model scored and the labels cover."""
    preds = DeltaTable(str(root / "out")).to_pandas()
    labels = DeltaTable(str(root / "labels")).to_pandas()
    rows = preds[(preds["model"] == model) & (preds["ds"] == day)].merge(labels, on=["id", "ds"])
    rows = rows[rows["prediction"].notna()]
    if column == "amount":
        y, yhat = rows["amount"].to_numpy(), rows["prediction"].to_numpy()
        return {
            "rmse": float(np.sqrt(sk.mean_squared_error(y, yhat))),
            "mae": sk.mean_absolute_error(y, yhat),
            "r2": sk.r2_score(y, yhat),
            "labelled_rows": float(
                len(preds[(preds["model"] == model) & (preds["ds"] == day)].merge(labels))
            ),
        }
    y = rows["defaulted"].to_numpy().astype(int)
    proba = np.stack(rows["probability"].to_numpy())
    return {
        "auc": sk.roc_auc_score(y, proba[:, 1]),
        "log_loss": sk.log_loss(y, proba),
        "brier": sk.brier_score_loss(y, proba[:, 1]),
        "accuracy": sk.accuracy_score(rows["defaulted"].astype(str), rows["label"]),
    }


def _evaluation_rows(root: Path) -> pd.DataFrame:
    table = DeltaTable(str(root / "mon")).to_pandas()
    return table[table["kind"] == "evaluation"]


def _metric(rows: pd.DataFrame, model: str, day: str, metric: str) -> float:
    hit = rows[(rows["model"] == model) & (rows["run_date"] == day) & (rows["metric"] == metric)]
    assert len(hit) == 1, (model, day, metric, len(hit))
    return float(hit["value"].iloc[0])


def test_evaluate_matches_sklearn_and_replaces_on_corrected_labels(
    scored: Path, spark: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, labels = str(scored / "job.yaml"), str(scored / "labels")
    args = ["evaluate", spec, "--labels", labels, "--on", "id,ds", "--label-column"]
    capsys.readouterr()
    assert run_cli([*args, "defaulted", "--model", "risk"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{STABLE}: ") and f"{NEVER_SCORED} unmatched labels" in printed[0]
    assert printed[1].startswith(f"{DRIFTED}: ") and " 0 unmatched labels" in printed[1]
    assert "risk auc 0." in printed[0] and "risk_flat (shadow) auc 0.5000" in printed[0]
    verdicts = [line for line in printed if " vs 'risk'" in line]
    assert len(verdicts) == 4  # two shadows x two dates
    # on the drifted day the champion is no better than a constant: only STABLE is clear
    assert any(v.startswith(STABLE) and v.endswith("challenger worse") for v in verdicts)
    assert all(v.endswith("challenger no difference") for v in verdicts if "risk_same" in v)
    assert f"{UNDATED} labels matched no prediction" in printed[-2]

    result = evaluate(
        spark, spec, labels=labels, on=["id", "ds"], label_column="amount", models=["spend"]
    )
    assert result.unmatched == {STABLE: NEVER_SCORED, DRIFTED: 0, None: UNDATED}
    rows = _evaluation_rows(scored)
    assert not rows.duplicated(["run_date", "model", "metric", "baseline"]).any()
    assert set(rows["baseline"]) == {"labels@v0", "champion:risk"}
    assert set(rows["feature"]) == {"defaulted", "amount"}
    for day in (STABLE, DRIFTED):
        for model, column in (("risk", "defaulted"), ("spend", "amount")):
            for metric, value in _expected(scored, model, day, column).items():
                assert _metric(rows, model, day, metric) == pytest.approx(value, abs=TOL), metric
        assert _metric(rows, "risk", day, "unmatched_labels") == (
            NEVER_SCORED if day == STABLE else 0
        )
        assert _metric(rows, "risk_flat", day, "auc") == 0.5
        assert _metric(rows, "risk_same", day, "auc_diff") == pytest.approx(0.0, abs=1e-12)
    assert _metric(rows, "risk_flat", STABLE, "auc_diff_high") < 0
    # DRIFTED has 30% null f_null: the linear models leave those rows unscored
    assert _metric(rows, "risk", DRIFTED, "unscored_rows") > 0
    assert _metric(rows, "risk", STABLE, "unscored_rows") == 0

    key = ["run_date", "model", "metric", "feature"]
    before = rows[rows["baseline"] == "labels@v0"].set_index(key)["value"]
    _write_labels(scored / "labels", seed=2)  # corrected labels: a new table version
    assert run_cli([*args, "defaulted", "--model", "risk"]) == 0
    assert run_cli([*args, "amount", "--model", "spend"]) == 0
    after_rows = _evaluation_rows(scored)
    assert len(after_rows) == len(rows)
    assert set(after_rows["baseline"]) == {"labels@v1", "champion:risk"}
    after = after_rows[after_rows["baseline"] == "labels@v1"].set_index(key)["value"]
    assert set(after.index) == set(before.index)
    assert (after != before.reindex(after.index)).any()
    assert _metric(after_rows, "spend", STABLE, "rmse") == pytest.approx(
        _expected(scored, "spend", STABLE, "amount")["rmse"], abs=TOL
    )

    one = evaluate(
        spark, spec, labels=labels, on="id,ds", label_column="amount", models=["spend"],
        start=DRIFTED, end=DRIFTED,
    )  # fmt: skip
    assert {e.run_date for e in one.evaluations} == {DRIFTED}
    assert len(_evaluation_rows(scored)) == len(rows)  # only DRIFTED's spend rows replaced


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("LABELS id,ds nope", "no label column 'nope'"),
        ("LABELS id,ds seen", "is timestamp"),
        ("LABELS id,ds defaulted", "regressors (spend)"),
        ("NOIDS id,ds amount", "no column 'ds'"),
        ("LABELS id,seen amount", "not an id column"),
        ("MISSING id amount", "does not exist"),
        ("LABELS id amount --from 11/02", "is not a date"),
        ("LABELS id amount --model nope", "is not a model"),
    ],
)
def test_bad_inputs_fail_in_one_line_before_spark(
    scored: Path,
    extra: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import batchscore.physical.session as session

    def no_spark(*_: Any, **__: Any) -> None:
        raise AssertionError("Spark was asked for")

    monkeypatch.setattr(session, "get_spark", no_spark)
    noids = scored / "noids"
    if not noids.exists():
        write_deltalake(str(noids), pa.table({"id": [1], "amount": [1.0]}))
    paths = {"LABELS": scored / "labels", "NOIDS": noids, "MISSING": scored / "missing"}
    table, on, column, *more = extra.split()
    argv = ["--labels", str(paths[table]), "--on", on, "--label-column", column, *more]
    capsys.readouterr()
    assert run_cli(["evaluate", str(scored / "job.yaml"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_a_spec_without_monitoring_is_refused(
    scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "job.yaml"
    text = (scored / "job.yaml").read_text().replace("monitoring: {table: mon}\n", "")
    spec.write_text(text.replace("path: ", f"path: {scored}/"))
    capsys.readouterr()
    argv = ["evaluate", str(spec), "--labels", str(scored / "labels"), "--on", "id"]
    assert run_cli([*argv, "--label-column", "amount"]) == 2
    err = capsys.readouterr().err.strip()
    assert "add `monitoring: {table: PATH}`" in err and len(err.splitlines()) == 1


def test_wide_layout_and_parquet_labels(scored: Path, spark: Any) -> None:
    """A wide table is stacked to long rows; Parquet labels have the baseline `labels`."""
    text = (scored / "job.yaml").read_text()
    text = text.replace("{table: mon}", "{table: mon_wide}").replace(
        "output: {path: out,", "output: {path: out_wide, layout: wide,"
    )
    spec = scored / "wide.yaml"
    spec.write_text(text.replace("quarantine: held", "quarantine: held_wide"))
    assert run_cli(["run", str(spec), "--run-date", STABLE, "--quiet"]) == 0
    parquet = scored / "labels_parquet"
    parquet.mkdir(exist_ok=True)
    table = DeltaTable(str(scored / "labels")).to_pyarrow_table()
    pq.write_table(table, parquet / "part-0.parquet")
    result = evaluate(
        spark, spec, labels=parquet, on="id,ds", label_column="defaulted", models=["risk"]
    )
    assert result.baseline == "labels" and result.unmatched[STABLE] == NEVER_SCORED
    wide = {e.model: e for e in result.evaluations}
    assert set(wide) == {"risk", "risk_same", "risk_flat"}
    assert wide["risk"].model_version and wide["risk"].role == "champion"
    assert wide["risk_flat"].role == "shadow"
    expected = _expected(scored, "risk", STABLE, "defaulted")  # the long table's rows
    for metric, value in expected.items():
        assert wide["risk"].metrics[metric] == pytest.approx(value, abs=TOL), metric
    verdicts = {c.challenger: c.verdict for c in result.comparisons}
    assert verdicts == {"risk_same": "no difference", "risk_flat": "worse"}
