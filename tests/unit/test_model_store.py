"""Model registry: register / list (CLI in-process), registry: paths, pins, tampering, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from batchscore.cli import run_cli
from batchscore.errors import ModelError
from batchscore.kernels.base import KernelKind
from batchscore.models import check_feature_count, compile_from_spec, load_artifact
from batchscore.models.store import STORE_ENV, ModelStore, parse_ref
from batchscore.monitor.profile import Profile

RNG = np.random.default_rng(0)
X = RNG.normal(size=(120, 4))
Y = np.where(X[:, 0] > 0, "yes", "no")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "registry"
    monkeypatch.setenv(STORE_ENV, str(root))
    return root


def dump(tmp_path: Path, model: Any, name: str = "model.joblib") -> Path:
    path = tmp_path / name
    joblib.dump(model, path)
    return path


def training_parquet(tmp_path: Path) -> Path:
    table = pa.table(
        {
            "x": pa.array([1.0, 2.0, None, 4.0, 5.0]),
            "n": pa.array([1, 2, 3, 4, 5]),
            "city": pa.array(["a", "b", "a", None, "a"]),
        }
    )
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    return path


def test_register_and_list_through_the_cli(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = dump(tmp_path, LogisticRegression().fit(X, Y))
    train = training_parquet(tmp_path)
    code = run_cli(
        [
            "models",
            "register",
            "churn",
            str(path),
            "--training-data",
            str(train),
            "--metric",
            "auc=0.91",
            "--metric",
            "note=first",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "registered registry:churn@1" in capsys.readouterr().out
    assert run_cli(["models", "register", "churn", str(path), "--store", str(store)]) == 0
    capsys.readouterr()
    assert run_cli(["models", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["churn@1", "churn@2"]
    assert "auc=0.91" in lines[0] and "profiled" in lines[0]

    manifest = json.loads((store / "churn" / "manifest.json").read_text())
    v1 = manifest["versions"][0]
    assert v1["version"] == 1 and len(v1["sha256"]) == 64
    assert v1["signature"]["n_features"] == 4
    assert v1["signature"]["task"] == "binary" and v1["signature"]["classes"] == ["no", "yes"]
    assert v1["metrics"] == {"auc": 0.91, "note": "first"}
    profile = Profile.from_json(v1["training_profile"])
    assert v1["training_profile"]["format"] == "batchscore.profile/1"
    assert list(profile.features) == ["x", "n", "city"] and profile.rows == 5
    x = profile.features["x"]
    assert (x.kind, x.dtype, x.count, x.nulls) == ("numeric", "double", 4, 1)
    assert x.mean == pytest.approx(3.0) and (x.min, x.max) == (1.0, 5.0) and x.sketch
    assert profile.features["n"].categories == {"1": 1, "2": 1, "3": 1, "4": 1, "5": 1}
    city = profile.features["city"]
    assert city.kind == "categorical" and city.categories == {"a": 3, "b": 1}
    assert city.nulls == 1 and city.distinct == 2
    assert Path(v1["file"]).is_file() and Path(v1["file"]) != path


def test_profile_of_a_delta_table(tmp_path: Path, store: Path) -> None:
    from deltalake import write_deltalake

    table = tmp_path / "train_delta"
    write_deltalake(str(table), pa.table({"v": [1.0, 2.0, 3.0], "s": ["a", "a", "b"]}))
    mv = ModelStore().register(
        "r", dump(tmp_path, Ridge().fit(X, X[:, 0])), training_data=str(table)
    )
    assert mv.training_profile is not None
    profile = Profile.from_json(mv.training_profile)
    assert profile.rows == 3 and profile.source == str(table)
    assert profile.features["v"].std == pytest.approx(1.0)
    assert profile.lookup("train.s") is profile.features["s"]


def test_registry_path_loads_without_a_spec_pin(tmp_path: Path, store: Path) -> None:
    model = LogisticRegression().fit(X, Y)
    mv = ModelStore().register("churn", dump(tmp_path, model))
    for ref in ("registry:churn@1", "registry:churn@latest"):
        art = load_artifact(ref, sha256=None, model_name="m")
        assert art.sha256 == mv.sha256 and art.format == "pickle"
        np.testing.assert_array_equal(art.obj.predict(X), model.predict(X))
    compiled = compile_from_spec("m", "registry:churn@latest", mv.sha256, None, None)
    assert compiled.kernel.kind is KernelKind.AFFINE and compiled.sha256 == mv.sha256
    with pytest.raises(ModelError, match=r"spec pins sha256 0{64} but the registry has"):
        load_artifact("registry:churn@1", sha256="0" * 64, model_name="m")


def test_unknown_name_and_version(tmp_path: Path, store: Path) -> None:
    ModelStore().register("churn", dump(tmp_path, Ridge().fit(X, X[:, 0])))
    with pytest.raises(ModelError, match=r"no model 'chrun'.*Did you mean 'churn'"):
        load_artifact("registry:chrun@1", sha256=None, model_name="m")
    with pytest.raises(ModelError, match=r"no version 7 \(it has 1\)"):
        load_artifact("registry:churn@7", sha256=None, model_name="m")
    with pytest.raises(ModelError, match="registry:NAME@VERSION"):
        parse_ref("registry:churn")


def test_tampered_artifact_is_refused_naming_the_file(tmp_path: Path, store: Path) -> None:
    mv = ModelStore().register("churn", dump(tmp_path, Ridge().fit(X, X[:, 0])))
    Path(mv.file).write_bytes(Path(mv.file).read_bytes() + b"\0")
    with pytest.raises(ModelError, match=rf"artifact {mv.file} was tampered with"):
        load_artifact("registry:churn@latest", sha256=None, model_name="m")


def test_classes_not_matching_the_signature_are_refused(tmp_path: Path, store: Path) -> None:
    ModelStore().register("churn", dump(tmp_path, LogisticRegression().fit(X, Y)))
    manifest_path = store / "churn" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["versions"][0]["signature"]["classes"] = ["0", "1"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"classes \['no', 'yes'\] but the registry signature"):
        load_artifact("registry:churn@1", sha256=None, model_name="m")


def test_feature_count_mismatch_is_refused(tmp_path: Path, store: Path) -> None:
    ModelStore().register("r", dump(tmp_path, Ridge().fit(X, X[:, 0])))
    compiled = compile_from_spec("r", "registry:r@1", None, None, None)
    with pytest.raises(ModelError, match=r"expects 4 inputs but its features \[a, b\] give 2"):
        check_feature_count(compiled, 2, ["a", "b"])


def test_unpinned_pickle_outside_the_registry_is_still_refused(tmp_path: Path) -> None:
    path = dump(tmp_path, Ridge().fit(X, X[:, 0]))
    with pytest.raises(ModelError, match="is a pickle and has no sha256 pin"):
        load_artifact(str(path), sha256=None, model_name="m")


def test_register_refuses_a_wrong_digest(tmp_path: Path, store: Path) -> None:
    path = dump(tmp_path, Ridge().fit(X, X[:, 0]))
    with pytest.raises(ModelError, match="but the spec pins"):
        ModelStore().register("r", path, sha256="1" * 64)
    assert ModelStore().list() == []


def test_cli_errors_are_one_line(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["models", "register", "bad name", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Model name 'bad name'") and "\n" not in err
    assert run_cli(["models", "register", "r", str(tmp_path / "missing.joblib")]) == 2
    assert run_cli(["models", "list"]) == 0
    assert "no models registered" in capsys.readouterr().out


def test_mlflow_uri_without_mlflow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.artifacts", None)
    for uri in ("models:/churn/3", "runs:/abc123/model"):
        with pytest.raises(
            ModelError, match=r"MLflow is not installed; install batchscore\[mlflow\]"
        ):
            load_artifact(uri, sha256=None, model_name="m")
