"""MLflow models (`models:/NAME/VERSION`, `runs:/RUN_ID/PATH`) logged to a real local tracking
store and scored through batchscore: parity with the model's own predict_proba, the sha256 pin
on the bytes that get deserialized, and one job through Spark into Delta.
"""

from __future__ import annotations

import hashlib
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from sklearn.linear_model import LogisticRegression

import batchscore as bs
from batchscore.cli import run_cli
from batchscore.errors import ModelError
from batchscore.kernels.base import KernelKind
from batchscore.models import compile_from_spec, load_artifact

N_FEATURES = 4


@dataclass(frozen=True)
class Store:
    """What the module logged: fitted models by registered name, their files, the run."""

    root: Path
    run_id: str
    fitted: dict[str, Any]
    files: dict[str, Path]

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name].read_bytes()).hexdigest()


def _data(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, N_FEATURES))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + 0.3 * rng.normal(size=rows) > 0).astype(int)
    return X, y


def _logged_file(root: Path, info: Any) -> Path:
    """The flavor data file MLflow wrote for `info` (one per logged model)."""
    found = [
        p
        for p in root.rglob(f"{info.model_id}/artifacts/*")
        if p.name in ("model.skops", "model.pkl", "model.lgb")
    ]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A file tracking store under tmp, named by MLFLOW_TRACKING_URI as a user would."""
    import mlflow
    import mlflow.lightgbm
    import mlflow.sklearn

    root = tmp_path_factory.mktemp("mlflow") / "mlruns"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", root.as_uri())
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database otherwise
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        X, y = _data(0, 2_000)
        fitted: dict[str, Any] = {
            "bs_logreg": LogisticRegression(C=0.5).fit(X, y),
            "bs_lgbm": lgb.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1).fit(X, y),
            "bs_logreg_pickle": LogisticRegression(C=2.0).fit(X, y),
            "bs_booster": lgb.train(
                {"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), num_boost_round=10
            ),
            "bs_victim": LogisticRegression(C=1.0).fit(X, y),
        }
        files: dict[str, Path] = {}
        with mlflow.start_run() as run:
            for name, model in fitted.items():
                if name in ("bs_lgbm", "bs_booster"):
                    info = mlflow.lightgbm.log_model(
                        model,
                        name=name.removeprefix("bs_"),
                        registered_model_name=name,
                        pip_requirements=["lightgbm"],  # inferring them costs ~5 s a model
                    )
                else:
                    fmt = "cloudpickle" if name == "bs_logreg_pickle" else "skops"
                    info = mlflow.sklearn.log_model(
                        model,
                        name=name.removeprefix("bs_"),
                        registered_model_name=name,
                        serialization_format=fmt,
                        pip_requirements=["scikit-learn"],
                    )
                files[name] = _logged_file(root, info)
        yield Store(root, run.info.run_id, fitted, files)


def _uris(store: Store, name: str) -> list[str]:
    return [
        f"models:/{name}/1",
        f"models:/{name}/latest",
        f"runs:/{store.run_id}/{name.removeprefix('bs_')}",
    ]


@pytest.mark.parametrize("name", ["bs_logreg", "bs_lgbm", "bs_logreg_pickle"])
def test_pinned_uris_match_predict_proba(store: Store, name: str) -> None:
    X, _ = _data(1, 500)
    want = store.fitted[name].predict_proba(X)
    for uri in _uris(store, name):
        model = compile_from_spec(name, uri, store.sha256(name), "predict_proba", None)
        assert model.sha256 == store.sha256(name) and model.version == model.sha256[:12]
        # compiled natively (affine / compiled trees), not scored opaquely
        assert model.kernel.kind in (KernelKind.AFFINE, KernelKind.TREE_ENSEMBLE), model.describe()
        np.testing.assert_allclose(model.score(X).probability, want, rtol=1e-9, err_msg=uri)


def test_formats_are_named_by_their_bytes(store: Store) -> None:
    assert store.files["bs_logreg"].name == "model.skops"
    assert store.files["bs_logreg_pickle"].name == "model.pkl"
    assert store.files["bs_booster"].name == "model.lgb"
    pinned = {name: store.sha256(name) for name in ("bs_logreg", "bs_logreg_pickle")}
    assert (
        load_artifact("models:/bs_logreg/1", sha256=pinned["bs_logreg"], model_name="m").format
        == "skops"
    )
    got = load_artifact(
        "models:/bs_logreg_pickle/1", sha256=pinned["bs_logreg_pickle"], model_name="m"
    )
    assert got.format == "pickle"


def test_a_downloaded_skops_file_follows_the_same_pin_rule(store: Store, tmp_path: Path) -> None:
    local = tmp_path / "model.skops"
    local.write_bytes(store.files["bs_logreg"].read_bytes())
    with pytest.raises(ModelError, match=r"is a skops file and has no sha256 pin"):
        load_artifact(str(local), sha256=None, model_name="m")
    got = load_artifact(str(local), sha256=store.sha256("bs_logreg"), model_name="m")
    assert got.format == "skops" and type(got.obj) is LogisticRegression


def test_lightgbm_text_loads_without_a_pin(store: Store) -> None:
    X, _ = _data(2, 300)
    booster = store.fitted["bs_booster"]
    model = compile_from_spec("b", "models:/bs_booster/1", None, None, None)
    assert (
        model.sha256 == store.sha256("bs_booster") and model.kernel.kind is KernelKind.TREE_ENSEMBLE
    )
    np.testing.assert_allclose(model.score(X).prediction, booster.predict(X), rtol=1e-9)


@pytest.mark.parametrize("name", ["bs_logreg", "bs_lgbm", "bs_logreg_pickle"])
def test_unpinned_model_is_refused_with_the_digest_to_pin(store: Store, name: str) -> None:
    for uri in _uris(store, name):
        with pytest.raises(ModelError, match=r"has no sha256 pin") as err:
            compile_from_spec(name, uri, None, None, None)
        assert f"Add sha256: {store.sha256(name)} to the spec" in str(err.value)
        assert f"Model '{name}' ({uri}, file {store.files[name].name})" in str(err.value)


def test_wrong_pin_and_unknown_model_are_clear(store: Store) -> None:
    with pytest.raises(ModelError, match=r"has sha256 [0-9a-f]{64} but the spec pins 0{64}"):
        compile_from_spec("m", "models:/bs_logreg/1", "0" * 64, None, None)
    with pytest.raises(ModelError, match=r"not 64 hex digits"):
        compile_from_spec("m", "models:/bs_logreg/1", "abc", None, None)
    with pytest.raises(ModelError, match=r"models:/bs_nope/1\) cannot be resolved by MLflow"):
        compile_from_spec("m", "models:/bs_nope/1", None, None, None)
    with pytest.raises(ModelError, match=r"cannot be resolved by MLflow"):
        compile_from_spec("m", "models:/bs_logreg/7", None, None, None)


def test_pinned_latest_is_refused_once_a_new_version_is_registered(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import mlflow.sklearn

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.root.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    X, y = _data(4, 500)
    pins = []
    for c in (0.1, 10.0):
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                LogisticRegression(C=c).fit(X, y),
                name="model",
                registered_model_name="bs_moving",
                pip_requirements=["scikit-learn"],
            )
        pins.append(hashlib.sha256(_logged_file(store.root, info).read_bytes()).hexdigest())
        assert compile_from_spec("m", "models:/bs_moving/latest", pins[-1], None, None)
    with pytest.raises(ModelError, match=r"now resolves to another model version"):
        compile_from_spec("m", "models:/bs_moving/latest", pins[0], None, None)
    assert compile_from_spec("m", "models:/bs_moving/1", pins[0], None, None).sha256 == pins[0]


def test_file_store_refusal_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a store MLflow has not opened yet: it caches the ones it has
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ModelError, match=r"unless MLFLOW_ALLOW_FILE_STORE=true"):
        load_artifact("models:/bs_logreg/1", sha256=None, model_name="m")


def test_missing_skops_names_the_extra(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(ModelError, match=r"skops is not installed; install batchscore\[mlflow\]"):
        load_artifact("models:/bs_logreg/1", sha256=store.sha256("bs_logreg"), model_name="m")


# ---- through Spark ------------------------------------------------------------------------


def _job(root: Path, store: Store, pins: dict[str, str]) -> Path:
    """A one-table job scoring two MLflow models; `pins` overrides the real digests."""
    X, _ = _data(3, 300)
    (root / "data" / "facts").mkdir(parents=True)
    columns = {"row_id": np.arange(len(X), dtype=np.int64)}
    columns |= {f"f{i}": X[:, i] for i in range(N_FEATURES)}
    pq.write_table(pa.table(columns), root / "data" / "facts" / "part-0.parquet")
    digest = {name: pins.get(name, store.sha256(name)) for name in ("bs_logreg", "bs_lgbm")}
    spec = root / "conf" / "job.yaml"
    spec.parent.mkdir()
    spec.write_text(
        textwrap.dedent(f"""\
        name: mlflow_job
        tables:
          facts: {{path: ../data/facts, format: parquet}}
        source:
          table: facts
          id_columns: [row_id]
        models:
          - name: logreg
            path: models:/bs_logreg/1
            sha256: "{digest["bs_logreg"]}"
            features: [f0, f1, f2, f3]
            output: predict_proba
          - name: lgbm
            path: runs:/{store.run_id}/lgbm
            sha256: "{digest["bs_lgbm"]}"
            features: [f0, f1, f2, f3]
        output:
          path: ../out/predictions
        """)
    )
    return spec


@pytest.mark.spark
def test_job_through_spark_writes_predict_proba(
    spark: Any, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.root.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    spec = _job(tmp_path, store, {})
    result = bs.run(spec, spark=spark)
    assert result.status == "committed" and result.rows == 2 * 300
    table = pa.table(DeltaTable(str(tmp_path / "out" / "predictions")).to_pyarrow_table())
    X, _ = _data(3, 300)
    for name, fitted in (("logreg", "bs_logreg"), ("lgbm", "bs_lgbm")):
        part = table.filter(pa.compute.equal(table["model"], name)).sort_by("row_id")
        assert part["row_id"].to_pylist() == list(range(300))
        assert set(part["model_version"].to_pylist()) == {store.sha256(fitted)[:12]}
        got = np.array(part["probability"].to_pylist(), dtype=float)
        np.testing.assert_allclose(got, store.fitted[fitted].predict_proba(X), rtol=1e-9)
        labels = [str(v) for v in store.fitted[fitted].predict(X)]
        assert part["label"].to_pylist() == labels


@pytest.mark.spark
def test_tampered_artifact_is_refused_before_any_spark_job(
    spark: Any,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.root.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    victim = store.files["bs_victim"]
    pinned = store.sha256("bs_victim")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, still a zip header: only the digest can tell
    victim.write_bytes(bytes(data))
    spec = _job(tmp_path, store, {})
    text = spec.read_text().replace("models:/bs_logreg/1", "models:/bs_victim/1")
    spec.write_text(text.replace(store.sha256("bs_logreg"), pinned))
    tracker = spark.sparkContext.statusTracker()
    spark.range(3).count()  # so that the tracker is seen to record jobs
    jobs_before = set(tracker.getJobIdsForGroup(None))
    assert jobs_before
    assert run_cli(["run", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bs_victim/1, file model.skops) has sha256" in err
    assert f"but the spec pins {pinned}" in err
    assert set(tracker.getJobIdsForGroup(None)) == jobs_before
    assert not (tmp_path / "out").exists()
