"""Reading a model file, safely.

Unpickling runs arbitrary code, so a pickle/joblib file is opened only when the spec pins its
sha256 and the file's bytes match the pin. The bytes are read once, hashed, and unpickled from
that same in-memory buffer, so the file cannot change between the check and the load.
LightGBM's text format is data, not code: it loads without a pin (a given pin is still checked).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from batchscore.errors import ModelError

ArtifactFormat = Literal["pickle", "lightgbm_text"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class LoadedArtifact:
    """A loaded model object, with the facts lineage needs (sha256 of the exact bytes)."""

    obj: Any
    sha256: str
    format: ArtifactFormat
    path: str
    warnings: tuple[str, ...] = ()


def load_artifact(path: str, *, sha256: str | None, model_name: str) -> LoadedArtifact:
    """Load a model file; refuse unpinned or mismatched pickles, and unreadable files.

    `registry:NAME@VERSION` / `registry:NAME@latest` load a registered version (the registry's
    sha256 is the pin; a spec pin, if given, must equal it). `models:/NAME/VERSION` and
    `runs:/RUN_ID/PATH` load through MLflow (optional dependency, batchscore[mlflow]).
    """
    if path.startswith("registry:"):
        return _load_registered(path, sha256=sha256, model_name=model_name)
    if path.startswith(("models:/", "runs:/")):
        return _load_mlflow(path, sha256=sha256, model_name=model_name)
    local = _local_path(path, model_name)
    where = f"Model '{model_name}' ({path})"
    try:
        data = local.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            f"{where} does not exist; check the model's path (relative paths resolve against "
            "the spec file's folder)."
        ) from None
    except OSError as exc:
        raise ModelError(f"{where} cannot be read: {_one_line(exc)}.") from None
    actual = hashlib.sha256(data).hexdigest()
    expected = _normalise_pin(sha256, where)
    if expected is not None and expected != actual:
        raise ModelError(
            f"{where} has sha256 {actual} but the spec pins {expected}; the file changed. "
            "Restore the pinned file, or pin the new one after checking where it came from."
        )
    return _load_bytes(data, actual, expected, where, path)


def _load_bytes(
    data: bytes, actual: str, expected: str | None, where: str, path: str
) -> LoadedArtifact:
    """Load already-read bytes whose pin (if any) has been checked against `actual`."""
    if is_lightgbm_text(data):
        return LoadedArtifact(_load_lightgbm_text(data, where), actual, "lightgbm_text", path)
    if expected is None:
        raise ModelError(
            f"{where} is a pickle and has no sha256 pin; pickles can run code on load. "
            f"Add sha256: {actual} to the spec after checking the file's origin."
        )
    obj, caught = _unpickle(data, where)
    return LoadedArtifact(obj, actual, "pickle", path, caught)


def _load_registered(ref: str, *, sha256: str | None, model_name: str) -> LoadedArtifact:
    """Resolve through the model registry; the manifest's sha256 pins the copied file."""
    from batchscore.models.store import ModelStore, check_signature

    store = ModelStore()
    mv = store.resolve(ref)
    where = f"Model '{model_name}' ({ref})"
    expected = _normalise_pin(sha256, where)
    if expected is not None and expected != mv.sha256:
        raise ModelError(
            f"{where}: the spec pins sha256 {expected} but the registry has {mv.sha256} for "
            f"{mv.ref}; fix the spec's pin or point it at the version it meant."
        )
    data = store.read_verified(mv)  # tampered bytes are refused here, before any unpickling
    loaded = _load_bytes(data, mv.sha256, mv.sha256, f"{where} -> {mv.file}", mv.file)
    check_signature(loaded.obj, mv, model_name)
    return loaded


def _load_mlflow(uri: str, *, sha256: str | None, model_name: str) -> LoadedArtifact:
    """Download an MLflow model (local tracking dir) and load its sklearn or LightGBM file."""
    where = f"Model '{model_name}' ({uri})"
    try:
        mlflow_artifacts = importlib.import_module("mlflow.artifacts")
    except ImportError:
        raise ModelError(
            f"{where} is an MLflow URI, and MLflow is not installed; install batchscore[mlflow] "
            "(pip install 'batchscore[mlflow]') or point the spec at the model file."
        ) from None
    try:
        local = Path(mlflow_artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:  # MlflowException, missing run or version
        raise ModelError(
            f"{where} cannot be resolved by MLflow: {_one_line(exc)}; check MLFLOW_TRACKING_URI."
        ) from None
    file = _mlflow_model_file(local, where)
    return load_artifact(str(file), sha256=sha256, model_name=model_name)


def _mlflow_model_file(local: Path, where: str) -> Path:
    if local.is_file():
        return local
    import yaml

    try:
        meta = yaml.safe_load((local / "MLmodel").read_text()) or {}
    except OSError:
        raise ModelError(
            f"{where} has no MLmodel file; log it with mlflow.<flavor>.log_model."
        ) from None
    flavors = meta.get("flavors") or {}
    if "lightgbm" in flavors:
        return local / str(flavors["lightgbm"].get("data", "model.lgb"))
    if "sklearn" in flavors:
        return local / str(flavors["sklearn"].get("pickled_model", "model.pkl"))
    raise ModelError(
        f"{where} has flavors {sorted(flavors)}; batchscore loads the sklearn and lightgbm ones."
    )


def sha256_of(path: str) -> str:
    """Hex sha256 of a local file (what a spec's `sha256:` pin must equal)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_lightgbm_text(data: bytes) -> bool:
    """True for what `Booster.save_model` writes: a "tree" line, then "version=v<N>"."""
    head = data[:200]
    return (head.startswith(b"tree\n") or head.startswith(b"tree\r\n")) and (b"\nversion=v" in head)


def _local_path(path: str, model_name: str) -> Path:
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ModelError(
            f"Model '{model_name}' ({path}) uses the '{parsed.scheme}://' scheme; model "
            "artifacts are read from local or mounted paths. Copy the file next to the spec."
        )
    return Path(path)


def _normalise_pin(sha256: str | None, where: str) -> str | None:
    if sha256 is None:
        return None
    pin = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(pin):
        raise ModelError(
            f"{where} has sha256 pin '{sha256}', which is not 64 hex digits; copy the value "
            "printed by `sha256sum` for the file."
        )
    return pin


def _load_lightgbm_text(data: bytes, where: str) -> Any:
    import lightgbm

    from batchscore.models.converters.lightgbm import validate_model_text

    try:
        # Checked first: LightGBM's loader aborts the process on some malformed files.
        validate_model_text(data)
        return lightgbm.Booster(model_str=data.decode("utf-8"))
    except Exception as exc:  # ModelTextError, LightGBMError, UnicodeDecodeError
        raise ModelError(
            f"{where} cannot be loaded: {_one_line(exc)}. Re-save it with Booster.save_model()."
        ) from None


def _unpickle(data: bytes, where: str) -> tuple[Any, tuple[str, ...]]:
    import joblib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = joblib.load(io.BytesIO(data))
        except ModuleNotFoundError as exc:
            raise ModelError(
                f"{where} cannot be loaded: it needs the module '{exc.name}', which is not "
                "installed. Install the package the model was saved with."
            ) from None
        except Exception as exc:  # truncated, garbage, incompatible: all one answer
            raise ModelError(
                f"{where} cannot be loaded: {type(exc).__name__}: {_one_line(exc)}. "
                "Check that the file is a complete joblib/pickle dump."
            ) from None
    return obj, tuple(dict.fromkeys(_one_line(w.message) for w in caught))


def _one_line(exc: BaseException | Warning | str) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
