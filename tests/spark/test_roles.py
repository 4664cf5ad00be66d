"""Shadow and canary models (issue 15): scored in the same pass as their champion, stored with
`role` and `served`, exactly one served prediction per input row; canary rows chosen by a
stable hash, the same across reruns and partitionings, kept when the share grows."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from sklearn.linear_model import LogisticRegression

from batchscore.cli import run_cli
from batchscore.datasets._write import sha256_file
from tests.health import REFERENCE, STABLE, build_health_star, design_matrix, spec_text

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The health star with a retrained challenger (risk_v2) next to its models."""
    root = tmp_path_factory.mktemp("roles")
    build_health_star(root, rows=5_000)
    _, X = design_matrix(root, REFERENCE)
    y = X[:, 1] - 0.4 * X[:, 0] > 0
    joblib.dump(LogisticRegression(C=0.1).fit(np.nan_to_num(X), y), root / "models" / "v2.joblib")
    return root


def _spec(star: Path, tmp_path: Path, challengers: str, *, layout: str = "long") -> Path:
    """The job with challengers: `name: key=value, key=value` per line (v2.joblib each)."""
    root = tmp_path / "job"
    shutil.copytree(star, root, ignore=shutil.ignore_patterns("out", "*.yaml"))
    text = spec_text(root)
    features = text.split("    features: [", 1)[1].split("]", 1)[0]
    digest = sha256_file(root / "models" / "v2.joblib")
    extra = ""
    for line in challengers.strip().splitlines():
        name, settings = line.split(":", 1)
        keys = "".join(
            f"    {kv.split('=')[0].strip()}: {kv.split('=')[1]}\n" for kv in settings.split(",")
        )
        extra += (
            f"  - name: {name}\n    path: models/v2.joblib\n    sha256: {digest}\n"
            f"    features: [{features}]\n{keys}"
        )
    text = text.replace("output: {", extra + "output: {")
    if layout == "wide":
        text = text.replace("output: {path: out,", "output: {path: out, layout: wide,")
    (root / "job.yaml").write_text(text)
    return root / "job.yaml"


def _out(spec: Path) -> pd.DataFrame:
    return DeltaTable(str(spec.parent / "out")).to_pandas()


def _run(spec: Path, *args: str) -> None:
    assert run_cli(["run", str(spec), "--run-date", STABLE, "--quiet", *args]) == 0


def test_shadow_and_canary_rows_equal_the_models_own_predictions(
    star: Path, tmp_path: Path
) -> None:
    spec = _spec(star, tmp_path, "risk_v2: shadow_of=risk\nrisk_c: canary_of=risk, share=0.2")
    _run(spec)
    out = _out(spec)
    ids, X = design_matrix(spec.parent, STABLE)
    v2 = joblib.load(spec.parent / "models" / "v2.joblib")
    expected = pd.Series(v2.predict_proba(X)[:, 1], index=ids)
    for name, role in (("risk_v2", "shadow"), ("risk_c", "canary")):
        rows = out[out["model"] == name].set_index("id")
        assert set(rows["role"]) == {role}
        np.testing.assert_allclose(rows["prediction"], expected[rows.index], rtol=1e-9)
    assert not out.loc[out["model"] == "risk_v2", "served"].any()
    assert set(out.loc[out["model"] == "risk", "role"]) == {"champion"}
    family = out[out["model"].isin(["risk", "risk_v2", "risk_c"])]
    served = family[family["served"]].groupby("id").size()
    assert len(served) == len(ids) and (served == 1).all()  # exactly one served row per input
    canary_share = out.loc[out["model"] == "risk_c", "served"].mean()
    assert 0.17 < canary_share < 0.23
    assert out.loc[out["model"] == "spend", "served"].all()  # other families untouched
    # no monitoring section: the comparisons go to their own table next to the predictions
    compared = DeltaTable(str(spec.parent / "out_comparisons")).to_pandas()
    assert set(compared.loc[compared["kind"] == "comparison", "model"]) == {"risk_v2", "risk_c"}
    assert {"mean_abs_diff", "agreement", "psi"} <= set(compared["metric"])


def test_canary_rows_are_stable_across_reruns_partitionings_and_share_increases(
    star: Path, tmp_path: Path, spark: Any
) -> None:
    spec = _spec(star, tmp_path, "risk_c: canary_of=risk, share=0.2")
    _run(spec)
    first = set(_out(spec).query("model == 'risk_c' and served")["id"])
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16k")  # many more scan partitions
    try:
        _run(spec, "--force")
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)
    assert set(_out(spec).query("model == 'risk_c' and served")["id"]) == first
    spec.write_text(spec.read_text().replace("share: 0.2", "share: 0.3"))
    _run(spec, "--force")
    grown = set(_out(spec).query("model == 'risk_c' and served")["id"])
    assert first < grown and 0.27 < len(grown) / 5_000 < 0.33


def test_wide_layout_has_a_served_column_per_model(star: Path, tmp_path: Path) -> None:
    spec = _spec(star, tmp_path, "risk_c: canary_of=risk, share=0.5", layout="wide")
    _run(spec)
    out = _out(spec)
    assert {"risk__served", "risk_c__served", "spend__served"} <= set(out.columns)
    assert (out["risk__served"] ^ out["risk_c__served"]).all()
    assert out["spend__served"].all()


def test_canary_share_over_a_million_ids(spark: Any) -> None:
    from pyspark.sql import functions as F

    from batchscore.physical.roles import BUCKET, BUCKETS, bucket_column

    ids = spark.range(1_000_000).withColumnRenamed("id", "t__id")
    share = (
        ids.select(bucket_column("job", ["t__id"]))
        .agg(F.avg((F.col(BUCKET) < F.lit(0.05 * BUCKETS)).cast("double")))
        .first()[0]
    )
    assert abs(share - 0.05) < 0.001


def test_each_run_compares_challengers_with_their_champion(star: Path, tmp_path: Path) -> None:
    spec = _spec(star, tmp_path, "risk_v2: shadow_of=risk\nrisk_c: canary_of=risk, share=0.2")
    spec.write_text(spec.read_text() + "monitoring: {table: mon}\n")
    _run(spec)
    out = _out(spec).pivot(index="id", columns="model", values=["prediction", "label", "served"])
    mon = DeltaTable(str(spec.parent / "mon")).to_pandas()
    compared = mon[(mon["kind"] == "comparison") & (mon["model"] == "risk_v2")]
    values = dict(zip(compared["metric"], compared["value"], strict=True))
    assert set(compared["baseline"]) == {"champion:risk"}
    diff = (out["prediction"]["risk_v2"] - out["prediction"]["risk"]).abs()
    assert values["mean_abs_diff"] == pytest.approx(diff.mean(), rel=1e-9)
    assert values["max_abs_diff"] == pytest.approx(diff.max(), rel=1e-9)
    agree = (out["label"]["risk_v2"] == out["label"]["risk"]).mean()
    assert values["agreement"] == pytest.approx(agree, rel=1e-9)
    assert values["flipped"] == pytest.approx(1 - agree, rel=1e-9)
    assert 0 <= values["psi"] < 10
    served = mon[mon["metric"] == "served_rows"].set_index("model")["value"]
    assert served["risk_v2"] == 0
    assert served["risk"] + served["risk_c"] == len(out) == served["spend"]
