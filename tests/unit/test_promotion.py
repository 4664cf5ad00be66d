"""Model promotion: `models promote` / `models history`, `registry:NAME@ALIAS` resolution,
one-line errors, and a manifest that stays valid through a crash-like partial write."""

from __future__ import annotations

import getpass
import json
import os
import threading
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from batchscore.cli import run_cli
from batchscore.errors import ModelError
from batchscore.models import compile_from_spec, load_artifact
from batchscore.models.store import STORE_ENV, USER_ENV, ModelStore, ModelVersion, parse_ref

RNG = np.random.default_rng(1)
X = RNG.normal(size=(60, 3))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "registry"
    monkeypatch.setenv(STORE_ENV, str(root))
    monkeypatch.setenv(USER_ENV, "alice")
    return root


def register_versions(tmp_path: Path, n: int, name: str = "churn") -> list[ModelVersion]:
    """n versions of `name`, each a different model (so a different sha256)."""
    out = []
    for i in range(n):
        path = tmp_path / f"{name}_{i}.joblib"
        joblib.dump(Ridge(alpha=1.0 + i).fit(X, X[:, 0] * (i + 1)), path)
        out.append(ModelStore().register(name, path))
    return out


def manifest(store: Path, name: str = "churn") -> dict[str, object]:
    data = json.loads((store / name / "manifest.json").read_text())
    assert isinstance(data, dict)
    return data


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_parse_ref_numbers_latest_and_aliases() -> None:
    assert parse_ref("registry:churn@3") == ("churn", 3)
    assert parse_ref("registry:churn@latest") == ("churn", None)
    assert parse_ref("registry:churn@champion") == ("churn", "champion")
    assert parse_ref(" registry:churn@_shadow2 ") == ("churn", "_shadow2")
    for bad in ("registry:churn@", "registry:churn@champ-ion", "registry:churn@2b"):
        with pytest.raises(ModelError, match=r"registry:NAME@ALIAS"):
            parse_ref(bad)


def test_champion_follows_each_promotion_in_the_same_process(tmp_path: Path, store: Path) -> None:
    v1, v2 = register_versions(tmp_path, 2)
    reg = ModelStore()
    promoted = reg.promote("churn", 1, reason="first")
    assert promoted is not None and (promoted.from_version, promoted.to_version) == (None, 1)
    assert reg.resolve("registry:churn@champion") == v1
    assert load_artifact("registry:churn@champion", sha256=None, model_name="m").sha256 == (
        v1.sha256
    )
    assert compile_from_spec("m", "registry:churn@champion", None, None, None).sha256 == v1.sha256

    moved = ModelStore().promote("churn", 2, reason="better auc")
    assert moved is not None and (moved.from_version, moved.to_version) == (1, 2)
    # No cache anywhere: the same reference, resolved again, serves the new version.
    assert reg.resolve("registry:churn@champion") == v2
    assert load_artifact("registry:churn@champion", sha256=None, model_name="m").sha256 == (
        v2.sha256
    )
    assert compile_from_spec("m", "registry:churn@champion", None, None, None).sha256 == v2.sha256
    # Numbers and @latest are untouched by aliases.
    assert reg.resolve("registry:churn@1") == v1 and reg.resolve("registry:churn@latest") == v2
    # Another alias is independent of champion.
    ModelStore().promote("churn", 1, alias="challenger")
    assert reg.aliases("churn") == {"challenger": 1, "champion": 2}
    assert reg.resolve("registry:churn@challenger") == v1
    assert reg.resolve("registry:churn@champion") == v2


def test_promote_and_history_through_the_cli(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_versions(tmp_path, 3)
    assert run_cli(["models", "promote", "churn", "--version", "1"]) == 0
    assert capsys.readouterr().out.startswith(
        "promoted registry:churn@champion: unset -> 1  by alice"
    )
    argv = ["models", "promote", "churn", "--version", "3", "--reason", "auc 0.93\n vs 0.91"]
    assert run_cli(argv) == 0
    assert "champion: 1 -> 3" in capsys.readouterr().out
    assert run_cli(["models", "promote", "churn", "--version", "2", "--alias", "challenger"]) == 0
    capsys.readouterr()

    assert run_cli(["models", "history", "churn"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    fields = [line.split("  ") for line in lines]
    assert [f[1:4] for f in fields] == [
        ["alice", "challenger", "- -> 2"],
        ["alice", "champion", "1 -> 3"],
        ["alice", "champion", "- -> 1"],
    ]
    assert fields[1][4] == "auc 0.93 vs 0.91"  # one line, whitespace collapsed
    assert all(f[0].endswith("+00:00") for f in fields)  # UTC ISO

    assert run_cli(["models", "history", "churn", "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["alias"], e["from"], e["to"]) for e in entries] == [
        ("challenger", None, 2),
        ("champion", 1, 3),
        ("champion", None, 1),
    ]
    assert set(entries[0]) == {"model", "alias", "from", "to", "at", "by", "reason"}
    assert entries[1]["reason"] == "auc 0.93 vs 0.91" and entries[2]["reason"] is None

    # The manifest: where each alias points now, and the history oldest first.
    data = manifest(store)
    assert data["aliases"] == {"champion": 3, "challenger": 2}
    history = data["history"]
    assert isinstance(history, list) and [h["to"] for h in history] == [1, 3, 2]
    assert [v.version for v in ModelStore().versions("churn")] == [1, 2, 3]

    assert run_cli(["models", "list"]) == 0
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert listed[1][:2] == ["churn@2", "[challenger]"]
    assert listed[2][:2] == ["churn@3", "[champion]"]
    assert run_cli(["models", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["aliases"] for r in rows] == [[], ["challenger"], ["champion"]]


def test_promoting_to_the_current_version_is_a_no_op(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_versions(tmp_path, 1)
    assert ModelStore().promote("churn", 1) is not None
    before = (store / "churn" / "manifest.json").read_bytes()
    assert run_cli(["models", "promote", "churn", "--version", "1", "--reason", "again"]) == 0
    out = capsys.readouterr().out
    assert "registry:churn@champion already points at version 1; nothing changed." in out
    assert (store / "churn" / "manifest.json").read_bytes() == before


def test_history_of_a_model_never_promoted(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_versions(tmp_path, 1)
    assert run_cli(["models", "history", "churn"]) == 0
    assert "never been promoted" in capsys.readouterr().out
    assert run_cli(["models", "history", "churn", "--json"]) == 0
    assert capsys.readouterr().out == ""


def test_promotion_errors_are_one_line(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_versions(tmp_path, 2)
    err = one_line_error(capsys, ["models", "promote", "chrun", "--version", "1"])
    assert "no model 'chrun'" in err and "Did you mean 'churn'?" in err
    err = one_line_error(capsys, ["models", "promote", "churn", "--version", "7"])
    assert "'churn' has no version 7 (it has 1, 2)" in err
    err = one_line_error(capsys, ["models", "promote", "churn", "--version", "1", "--alias", "a-b"])
    assert "Alias 'a-b' is not an identifier" in err and "--alias champion" in err
    err = one_line_error(
        capsys, ["models", "promote", "churn", "--version", "1", "--alias", "latest"]
    )
    assert "Alias 'latest' is reserved" in err
    err = one_line_error(capsys, ["models", "history", "chrun"])
    assert "Did you mean 'churn'?" in err
    assert "history" not in manifest(store) and "aliases" not in manifest(store)


def test_an_alias_never_set_names_the_fix(tmp_path: Path, store: Path) -> None:
    register_versions(tmp_path, 2)
    with pytest.raises(ModelError) as caught:
        load_artifact("registry:churn@champion", sha256=None, model_name="m")
    text = str(caught.value)
    assert "'churn' has no alias 'champion' (aliases: none)" in text and "\n" not in text
    assert "`batchscore models promote churn --version V`" in text
    ModelStore().promote("churn", 1, alias="challenger")
    with pytest.raises(ModelError) as caught:
        ModelStore().resolve("registry:churn@challengr")
    text = str(caught.value)
    assert "(aliases: challenger -> 1). Did you mean 'challenger'?" in text
    assert "promote churn --version V --alias challengr`" in text


def test_an_alias_to_a_version_the_manifest_lost(tmp_path: Path, store: Path) -> None:
    register_versions(tmp_path, 2)
    ModelStore().promote("churn", 2)
    path = store / "churn" / "manifest.json"
    data = json.loads(path.read_text())
    data["versions"] = data["versions"][:1]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"'churn@champion' points at version 2, which the"):
        ModelStore().resolve("registry:churn@champion")


def test_user_defaults_to_the_login_name(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_versions(tmp_path, 2)
    monkeypatch.delenv(USER_ENV)
    monkeypatch.setattr(getpass, "getuser", lambda: "bob")
    first = ModelStore().promote("churn", 1)
    assert first is not None and first.by == "bob"

    def no_login() -> str:
        raise OSError("no login name")

    monkeypatch.setattr(getpass, "getuser", no_login)
    second = ModelStore().promote("churn", 2)
    assert second is not None and second.by == "unknown"


def test_a_crash_while_writing_leaves_the_old_manifest(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, _ = register_versions(tmp_path, 2)
    ModelStore().promote("churn", 1)
    folder = store / "churn"
    before = (folder / "manifest.json").read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk full"):
            ModelStore().promote("churn", 2)
    assert (folder / "manifest.json").read_bytes() == before
    assert not list(folder.glob("*.tmp"))  # the failed write cleaned up after itself
    assert ModelStore().resolve("registry:churn@champion") == v1

    # A process killed mid-write leaves a partial temporary file: nothing reads it.
    (folder / "manifest.k1ll3d.tmp").write_text('{"name": "churn", "versions": [{"ver')
    (folder / "manifest.json.tmp").write_text("{")  # the old fixed temporary name too
    assert ModelStore().names() == ["churn"]
    assert ModelStore().resolve("registry:churn@champion") == v1
    moved = ModelStore().promote("churn", 2)
    assert moved is not None and moved.from_version == 1
    assert ModelStore().aliases("churn") == {"champion": 2}
    assert [p.to_version for p in ModelStore().history("churn")] == [2, 1]


def test_register_skips_a_folder_a_crashed_register_left(tmp_path: Path, store: Path) -> None:
    register_versions(tmp_path, 1)
    (store / "churn" / "v2").mkdir()  # killed after the copy, before the manifest
    ModelStore().promote("churn", 1)
    (v,) = register_versions(tmp_path, 1)
    assert v.version == 3 and [m.version for m in ModelStore().versions("churn")] == [1, 3]
    assert ModelStore().aliases("churn") == {"champion": 1}  # register keeps aliases and history
    assert len(ModelStore().history("churn")) == 1


def test_concurrent_promotions_lose_no_history(tmp_path: Path, store: Path) -> None:
    register_versions(tmp_path, 2)
    errors: list[BaseException] = []

    def promote(i: int) -> None:
        try:
            ModelStore().promote("churn", 1 + i % 2, alias=f"a{i}", user=f"u{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ModelStore().aliases("churn") == {f"a{i}": 1 + i % 2 for i in range(12)}
    assert sorted(p.by for p in ModelStore().history("churn")) == sorted(f"u{i}" for i in range(12))
