"""The model registry: versioned, pinned copies of model artifacts with what we know about them.

Layout (a plain folder, default `./model_registry`, or $BATCHSCORE_MODEL_STORE, or --store):

    model_registry/
      NAME/
        manifest.json          {"name": NAME, "versions": [{version, file, sha256, ...}, ...],
                                "aliases": {ALIAS: VERSION}, "history": [{promotion}, ...]}
        manifest.lock          held (flock) while the manifest is read, changed and replaced
        v1/<artifact file>     the registered bytes, copied
        v2/...

Each version records the artifact's sha256 (its pin: a registered pickle loads without a
spec pin, and a file whose bytes changed since is refused), a signature (n_features, feature
names when the model knows them, task, classes), a training-data profile when one was given,
and free-form metrics. Versions count up from 1. Specs name them `registry:NAME@3` or
`registry:NAME@latest`.

Registering is the trust decision: `register` reads the file once, hashes the bytes and loads
the model from those same bytes to read its signature. Pass `sha256=` (`--sha256`) to check
the file against a digest from its origin first.

Promoting is the serving decision: `promote(NAME, V, alias="champion")` points an alias at a
registered version, and specs that name `registry:NAME@champion` score with it from their next
run. Each move is appended to the manifest's `history` (alias, from, to, at (UTC), by
($BATCHSCORE_USER, else the login name), reason); `aliases` holds where each alias points now.

The manifest is replaced atomically: written to a uniquely named temporary file in the same
folder, flushed to disk, then renamed over `manifest.json`, so a reader sees the old or the new
manifest, never a part. A crash leaves at most a stray `manifest.*.tmp`, which nothing reads.
Writers of one model (register, promote) take an exclusive lock on `manifest.lock` around
read-change-replace, so concurrent promotions never lose each other's history entries.

On an object store (`BATCHSCORE_MODEL_STORE=s3://bucket/registry`) the same layout is a set of
keys: the artifact is written before the manifest, and the manifest is one PUT, which readers
see whole or not at all. Object stores have no file locks: run one registry writer (register,
promote) per model at a time there (docs/storage.md).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from batchscore.errors import DataError, ModelError
from batchscore.models.store_reader import (
    DEFAULT_ALIAS,
    DEFAULT_STORE,
    MANIFEST,
    STORE_ENV,
    ModelVersion,
    Promotion,
    StoreReader,
    check_alias,
    check_signature,
    parse_ref,
    store_root,
)
from batchscore.sinks.storage import (
    delta_table,
    file_type,
    filesystem,
    is_delta_table,
    is_object_store,
    list_folder,
    read_bytes,
    write_bytes,
)

__all__ = [
    "DEFAULT_ALIAS",
    "DEFAULT_STORE",
    "MANIFEST",
    "STORE_ENV",
    "USER_ENV",
    "ModelStore",
    "ModelVersion",
    "Promotion",
    "check_alias",
    "check_signature",
    "model_signature",
    "parse_ref",
    "profile_table",
    "store_root",
]

USER_ENV = "BATCHSCORE_USER"
LOCK = "manifest.lock"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION_FOLDER = re.compile(r"^v([0-9]+)$")


class ModelStore(StoreReader):
    """A registry folder that versions can be added to (reading is StoreReader's)."""

    def register(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        training_data: str | None = None,
        metrics: dict[str, Any] | None = None,
        sha256: str | None = None,
    ) -> ModelVersion:
        """Copy the artifact in as the next version, with its signature, profile and metrics."""
        # Imported here: loading and compiling a model pulls in the converters (scikit-learn,
        # LightGBM), which listing or resolving versions never needs.
        from batchscore.models.artifact import load_artifact

        if not _NAME.match(name):
            raise ModelError(
                f"Model name '{name}' is not usable in the registry; use letters, digits, "
                "'_', '.' and '-' (starting with a letter or digit)."
            )
        source = os.fspath(path)
        try:
            data = read_bytes(source)
        except Exception as exc:  # OSError, or ArrowInvalid for a scheme pyarrow cannot open
            raise ModelError(
                f"Model file {source} cannot be read: {getattr(exc, 'strerror', None) or exc}."
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        pin = digest if sha256 is None else sha256
        file_name = source.rstrip("/").rsplit("/", 1)[-1]
        with tempfile.TemporaryDirectory() as tmp:  # load exactly the bytes we hashed
            staged = Path(tmp) / file_name
            staged.write_bytes(data)
            artifact = load_artifact(str(staged), sha256=pin, model_name=name)
        signature = model_signature(artifact.obj, name)
        profile = profile_table(training_data) if training_data else None

        if not is_object_store(self.root):
            os.makedirs(self.path(name), exist_ok=True)
        with self._locked(name):
            manifest = self._read_manifest(name)
            versions = manifest.get("versions", [])
            # Past any folder a crashed register left behind without a manifest entry.
            number = max((int(v["version"]) for v in versions), default=0) + 1
            number = max(number, self._last_folder(name) + 1)
            folder = self.path(name, f"v{number}")
            if not is_object_store(folder):
                os.makedirs(folder, exist_ok=False)
            target = self.path(name, f"v{number}", file_name)
            write_bytes(target, data)
            mv = ModelVersion(
                name=name,
                version=number,
                file=_absolute(target),
                sha256=digest,
                signature=signature,
                registered_at=_now(),
                source=_absolute(source),
                metrics=dict(metrics or {}),
                training_profile=profile,
            )
            self._write_manifest(
                name, {**manifest, "name": name, "versions": [*versions, mv.to_json()]}
            )
        return mv

    def promote(
        self,
        name: str,
        version: int,
        *,
        alias: str = DEFAULT_ALIAS,
        reason: str | None = None,
        user: str | None = None,
    ) -> Promotion | None:
        """Point `alias` at registered `version` and record the move in the model's history.

        Returns the recorded Promotion, or None when the alias already points at `version`
        (nothing is written). `user` defaults to $BATCHSCORE_USER, else the login name.
        """
        check_alias(alias)
        self.require(name)
        with self._locked(name):
            manifest = self._read_manifest(name)
            known = [int(v["version"]) for v in manifest.get("versions", [])]
            if version not in known:
                have = ", ".join(str(v) for v in known) or "none"
                raise ModelError(
                    f"Model registry {self.root}: '{name}' has no version {version} (it has "
                    f"{have}); promote one of those, or register the model first with "
                    f"`batchscore models register {name} PATH`."
                )
            aliases = {str(a): int(v) for a, v in (manifest.get("aliases") or {}).items()}
            previous = aliases.get(alias)
            if previous == version:
                return None
            promotion = Promotion(
                alias=alias,
                from_version=previous,
                to_version=version,
                at=_now(),
                by=current_user() if user is None else user,
                reason=" ".join((reason or "").split()) or None,
            )
            history = [*(manifest.get("history") or []), promotion.to_json()]
            self._write_manifest(
                name, {**manifest, "aliases": {**aliases, alias: version}, "history": history}
            )
        return promotion

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Exclusive lock on NAME/manifest.lock (released by the OS if the process dies);
        a no-op where fcntl is missing (Windows) and on object stores (no locks there)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        if is_object_store(self.root):
            yield
            return
        with open(self.path(name, LOCK), "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _last_folder(self, name: str) -> int:
        numbers = [
            int(m[1])
            for info in list_folder(self.path(name))
            if info.type == pafs.FileType.Directory and (m := _VERSION_FOLDER.match(info.base_name))
        ]
        return max(numbers, default=0)

    def _write_manifest(self, name: str, manifest: dict[str, Any]) -> None:
        """Replace NAME/manifest.json atomically: a unique temporary file, fsync, rename (on
        an object store: one PUT, atomic by itself)."""
        text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default)
        if is_object_store(self.root):
            write_bytes(self.path(name, MANIFEST), text.encode())
            return
        folder = Path(self.path(name))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="manifest.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, folder / MANIFEST)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _absolute(location: str) -> str:
    """A local path made absolute (symlinks resolved); a URI as it is."""
    return location if is_object_store(location) else str(Path(location).resolve())


def current_user() -> str:
    """$BATCHSCORE_USER, else the login name, else 'unknown' (a container without one)."""
    explicit = os.environ.get(USER_ENV, "").strip()
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def model_signature(obj: Any, name: str) -> dict[str, Any]:
    """n_features, feature names (when the model knows them), task and classes."""
    # From models.compiled, which imports (so registers) every converter.
    from batchscore.models.compiled import compile_model

    kernel = compile_model(obj, model_name=name)
    names = getattr(obj, "feature_names_in_", None)
    if names is None and callable(getattr(obj, "feature_name", None)):  # a LightGBM Booster
        names = obj.feature_name()
    elif names is None and hasattr(obj, "booster_"):
        names = obj.booster_.feature_name()
    return {
        "n_features": int(kernel.n_features) if kernel.n_features >= 0 else None,
        "feature_names": [str(n) for n in names] if names is not None else None,
        "task": kernel.task,
        "classes": list(kernel.classes) if kernel.classes is not None else None,
        "model_class": f"{type(obj).__module__}.{type(obj).__qualname__}",
        "kernel": kernel.describe(),
    }


# ---------------------------------------------------------------- training profile


def profile_table(location: str) -> dict[str, Any]:
    """The training profile (monitor.profile's JSON) of a Parquet file/folder or a Delta table:
    what drift and validation compare a run's inputs with."""
    # Imported here: listing or resolving versions never needs pyarrow or the sketches.
    from batchscore.monitor.flat_tables import profile_arrow_table

    return profile_arrow_table(_read_table(location), source=str(location)).to_json()


def _read_table(location: str) -> Any:
    if file_type(location) == pafs.FileType.NotFound:
        raise DataError(
            f"Training data {location} does not exist; give a Parquet file or folder, or a "
            "Delta table path."
        )
    try:
        if is_delta_table(location):
            return delta_table(location).to_pyarrow_table()
        import pyarrow.dataset as ds

        fs, base = filesystem(location)
        return ds.dataset(base, filesystem=fs, format="parquet").to_table()
    except Exception as exc:  # pyarrow / delta-rs errors: one line for the user
        raise DataError(
            f"Training data {location} cannot be read as Parquet or Delta: "
            f"{' '.join(str(exc).split())[:200]}."
        ) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
