"""Reading a model file, safely.

Unpickling runs arbitrary code, so a pickle/joblib file is opened only when the spec pins its
sha256 and the file's bytes match the pin. The bytes are read once, hashed, and unpickled from
that same in-memory buffer, so the file cannot change between the check and the load.
LightGBM's text format is data, not code: it loads without a pin (a given pin is still checked).
MLflow models (`models:/`, `runs:/`) follow the same rule for the flavor's data file; skops
files count as code, since MLflow stores their trusted types inside the model.

A file on an object store (`s3://...`, read with the job's storage options) is fetched into a
local cache keyed by its sha256 (`<cache dir>/models/<sha256>`, the compiled-tree cache's
folder): a pinned file whose bytes are cached is not fetched again, and cached bytes are
hashed again before use, so the pin is always checked on the bytes that are loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import re
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from batchscore.errors import ModelError, collapsed
from batchscore.kernels.trees.compiled.cache import cache_root
from batchscore.models.store_reader import StoreReader, check_signature
from batchscore.sinks.storage import is_object_store, read_bytes, write_bytes

ArtifactFormat = Literal["pickle", "lightgbm_text", "skops"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ZIP_MAGIC = b"PK\x03\x04"  # skops files are zip archives; pickles start with 0x80
_MLFLOW_FLAVORS = (("lightgbm", "data", "model.lgb"), ("sklearn", "pickled_model", "model.pkl"))


@dataclass(frozen=True)
class LoadedArtifact:
    """A loaded model object, with the facts lineage needs (sha256 of the exact bytes)."""

    obj: Any
    sha256: str
    format: ArtifactFormat
    path: str
    warnings: tuple[str, ...] = ()
    source: str = ""
    """Where the bytes came from when a reference resolved them: `registry:NAME@VERSION`."""


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
    where = f"Model '{model_name}' ({path})"
    if is_object_store(path):
        data = _fetch(path, _normalise_pin(sha256, where), where)
    else:
        data = _read_local(_local_path(path), where)
    actual = hashlib.sha256(data).hexdigest()
    expected = _normalise_pin(sha256, where)
    if expected is not None and expected != actual:
        raise ModelError(
            f"{where} has sha256 {actual} but the spec pins {expected}; the file changed. "
            "Restore the pinned file, or pin the new one after checking where it came from."
        )
    if is_object_store(path):
        _cache(data, actual)
    return _load_bytes(data, actual, expected, where, path)


def _read_local(local: Path, where: str) -> bytes:
    try:
        return local.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            f"{where} does not exist; check the model's path (relative paths resolve against "
            "the spec file's folder)."
        ) from None
    except IsADirectoryError:
        raise ModelError(
            f"{where} is a folder, not a model file; point path: at the saved model itself "
            "(.joblib, .pkl, .skops, LightGBM .txt) or use a registry: or models:/ URI."
        ) from None
    except OSError as exc:
        raise ModelError(f"{where} cannot be read: {collapsed(exc)}.") from None


def model_cache_dir() -> Path:
    """Where object-store model files are cached, one file per sha256."""
    return cache_root() / "models"


def _fetch(uri: str, pin: str | None, where: str) -> bytes:
    """A remote model file's bytes: from the cache when `pin` names cached bytes that still
    hash to it, else from the object store."""
    cached = _cached(pin)
    if cached is not None:
        return cached
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        raise ModelError(f"{where} does not exist; check the model's path.") from None
    except IsADirectoryError:
        raise ModelError(
            f"{where} is a folder, not a model file; point path: at the saved model itself."
        ) from None
    except Exception as exc:  # OSError from the store, ArrowInvalid for an unknown scheme
        raise ModelError(
            f"{where} cannot be read: {collapsed(exc)}; check the path and the storage "
            "settings (environment or the spec's storage section)."
        ) from None


def _cached(pin: str | None) -> bytes | None:
    """The cached bytes of sha256 `pin` when they still hash to it (None: not cached)."""
    if pin is None:
        return None
    try:
        cached = (model_cache_dir() / pin).read_bytes()
    except OSError:
        return None
    return cached if hashlib.sha256(cached).hexdigest() == pin else None


def _cache(data: bytes, digest: str) -> None:
    """Keep fetched bytes under their sha256 (best effort: loading uses the bytes in memory)."""
    target = model_cache_dir() / digest
    if target.is_file():
        return
    try:
        write_bytes(str(target), data)
    except OSError:
        pass


def _load_bytes(
    data: bytes, actual: str, expected: str | None, where: str, path: str
) -> LoadedArtifact:
    """Load already-read bytes whose pin (if any) has been checked against `actual`."""
    if is_lightgbm_text(data):
        return LoadedArtifact(_load_lightgbm_text(data, where), actual, "lightgbm_text", path)
    if data.startswith(_ZIP_MAGIC):
        return _load_skops(data, actual, expected, where, path)
    if expected is None:
        raise ModelError(
            f"{where} is a pickle and has no sha256 pin; pickles can run code on load. "
            f"Add sha256: {actual} to the spec after checking the file's origin."
        )
    obj, caught = _unpickle(data, where)
    return LoadedArtifact(obj, actual, "pickle", path, caught)


def _load_registered(ref: str, *, sha256: str | None, model_name: str) -> LoadedArtifact:
    """Resolve through the model registry; the manifest's sha256 pins the copied file."""
    store = StoreReader()
    mv = store.resolve(ref)
    where = f"Model '{model_name}' ({ref})"
    expected = _normalise_pin(sha256, where)
    if expected is not None and expected != mv.sha256:
        raise ModelError(
            f"{where}: the spec pins sha256 {expected} but the registry has {mv.sha256} for "
            f"{mv.ref}; fix the spec's pin or point it at the version it meant."
        )
    remote = is_object_store(mv.file)
    data = _cached(mv.sha256) if remote else None
    if data is None:
        data = store.read_verified(mv)  # tampered bytes are refused here, before unpickling
        if remote:
            _cache(data, mv.sha256)
    loaded = _load_bytes(data, mv.sha256, mv.sha256, f"{where} -> {mv.file}", mv.file)
    check_signature(loaded.obj, mv, model_name)
    return replace(loaded, source=mv.ref)


def _load_mlflow(uri: str, *, sha256: str | None, model_name: str) -> LoadedArtifact:
    """Download an MLflow model (MLFLOW_TRACKING_URI) and load its sklearn or LightGBM file.

    The pin covers the flavor's data file (model.skops, model.pkl or model.lgb), the bytes that
    are deserialized: MLflow records no digest, and `models:/NAME/latest` may move. Skops files
    need the pin too, because MLflow reads their trusted types from the model itself. We load
    the bytes ourselves, so MLflow's own deserialization gate is not involved.
    """
    where = f"Model '{model_name}' ({uri})"
    expected = _normalise_pin(sha256, where)
    mlflow_artifacts = _import_optional(
        "mlflow.artifacts", where, "is an MLflow URI, and MLflow", " or point the spec at the file"
    )
    with tempfile.TemporaryDirectory(prefix="batchscore-mlflow-") as tmp:
        local = _download_mlflow(mlflow_artifacts, uri, tmp, where)
        file = _mlflow_model_file(local, where)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ModelError(f"{where}: {file.name} cannot be read: {collapsed(exc)}.") from None
    where = f"Model '{model_name}' ({uri}, file {file.name})"
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None and expected != actual:
        raise ModelError(
            f"{where} has sha256 {actual} but the spec pins {expected}; the artifact changed "
            "or the URI now resolves to another model version. Point the spec at the pinned "
            "version, or pin the new one after checking where it came from."
        )
    return _load_bytes(data, actual, expected, where, f"{uri}/{file.name}")


def _import_optional(module: str, where: str, what: str, alternative: str = "") -> Any:
    """Import an optional dependency, or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(
            f"{where} {what} is not installed; install batchscore[mlflow] "
            f"(pip install 'batchscore[mlflow]'){alternative}."
        ) from None


def _download_mlflow(mlflow_artifacts: Any, uri: str, dst: str, where: str) -> Path:
    try:
        return Path(mlflow_artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    except Exception as exc:  # MlflowException, missing run or version, unreachable server
        text = " ".join(str(exc).split())
        tracking = _tracking_uri()
        if "MLFLOW_ALLOW_FILE_STORE" in text:
            raise ModelError(
                f"{where}: MLflow refuses the file tracking store {tracking} unless "
                "MLFLOW_ALLOW_FILE_STORE=true; set it, or point MLFLOW_TRACKING_URI at a "
                "tracking server."
            ) from None
        if "unsupported URI" in text and tracking.startswith("sqlite:"):
            raise ModelError(
                f"{where}: the tracking URI {tracking} (MLflow's default when "
                "MLFLOW_TRACKING_URI is unset) needs the full mlflow package, and batchscore "
                "installs mlflow-skinny; set MLFLOW_TRACKING_URI to your tracking server or "
                "file store, or pip install mlflow."
            ) from None
        raise ModelError(
            f"{where} cannot be resolved by MLflow (tracking URI {tracking}): "
            f"{collapsed(text)}; check the URI and MLFLOW_TRACKING_URI."
        ) from None


def _tracking_uri() -> str:
    try:
        return str(importlib.import_module("mlflow").get_tracking_uri())
    except Exception:  # an unusable configuration is reported by the caller
        return "unknown"


def _mlflow_model_file(local: Path, where: str) -> Path:
    """The data file of the model's sklearn or lightgbm flavor, inside the downloaded folder."""
    if local.is_file():
        return local
    import yaml

    try:
        meta = yaml.safe_load((local / "MLmodel").read_text()) or {}
    except OSError:
        raise ModelError(
            f"{where} has no MLmodel file; log it with mlflow.sklearn.log_model or "
            "mlflow.lightgbm.log_model."
        ) from None
    except yaml.YAMLError as exc:
        raise ModelError(f"{where} has an unreadable MLmodel file: {collapsed(exc)}.") from None
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    flavors = flavors if isinstance(flavors, dict) else {}
    for flavor, key, default in _MLFLOW_FLAVORS:
        conf = flavors.get(flavor)
        if isinstance(conf, dict):
            return _inside(local, str(conf.get(key) or default), where)
    raise ModelError(
        f"{where} has flavors {sorted(flavors)}; batchscore loads the sklearn and lightgbm "
        "ones. Log the model with mlflow.sklearn or mlflow.lightgbm, or export its file."
    )


def _inside(folder: Path, name: str, where: str) -> Path:
    """`folder/name`, refusing a name in MLmodel that points outside the model's folder."""
    file = (folder / name).resolve()
    if not file.is_relative_to(folder.resolve()):
        raise ModelError(
            f"{where}: its MLmodel names the data file '{name}', outside the model's folder; "
            "re-log the model."
        )
    return file


def _load_skops(
    data: bytes, actual: str, expected: str | None, where: str, path: str
) -> LoadedArtifact:
    """A skops file (MLflow's default for sklearn-API models): loaded only when pinned."""
    if expected is None:
        raise ModelError(
            f"{where} is a skops file and has no sha256 pin; loading it can run code (its "
            f"trusted types come from the model itself). Add sha256: {actual} to the spec "
            "after checking the model's origin."
        )
    sio = _import_optional("skops.io", where, "was saved in the skops format, and skops")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # The pin vouches for these exact bytes, so every type they name is trusted.
            obj = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
        except Exception as exc:  # corrupt zip, missing module, version clash
            raise ModelError(
                f"{where} cannot be loaded: {type(exc).__name__}: {collapsed(exc)}. "
                "Install the packages the model was logged with, or re-log it."
            ) from None
    notes = tuple(dict.fromkeys(collapsed(w.message) for w in caught))
    return LoadedArtifact(obj, actual, "skops", path, notes)


def sha256_of(path: str) -> str:
    """Hex sha256 of a file, local or on an object store (what a spec's `sha256:` pin must
    equal)."""
    return hashlib.sha256(read_bytes(path)).hexdigest()


def is_lightgbm_text(data: bytes) -> bool:
    """True for what `Booster.save_model` writes: a "tree" line, then "version=v<N>"."""
    head = data[:200]
    return (head.startswith(b"tree\n") or head.startswith(b"tree\r\n")) and (b"\nversion=v" in head)


def _local_path(path: str) -> Path:
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
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

    from batchscore.kernels.trees.lightgbm_text import validate_model_text

    try:
        # Checked first: LightGBM's loader aborts the process on some malformed files.
        validate_model_text(data)
        return lightgbm.Booster(model_str=data.decode("utf-8"))
    except Exception as exc:  # ModelTextError, LightGBMError, UnicodeDecodeError
        raise ModelError(
            f"{where} cannot be loaded: {collapsed(exc)}. Re-save it with Booster.save_model()."
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
                f"{where} cannot be loaded: {type(exc).__name__}: {collapsed(exc)}. "
                "Check that the file is a complete joblib/pickle dump."
            ) from None
    return obj, tuple(dict.fromkeys(collapsed(w.message) for w in caught))
