"""The model registry: versioned, pinned copies of model artifacts with what we know about them.

Layout (a plain folder, default `./model_registry`, or $BATCHSCORE_MODEL_STORE, or --store):

    model_registry/
      NAME/
        manifest.json          {"name": NAME, "versions": [{version, file, sha256, ...}, ...]}
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
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from batchscore.errors import DataError, ModelError, did_you_mean

STORE_ENV = "BATCHSCORE_MODEL_STORE"
DEFAULT_STORE = "model_registry"
MANIFEST = "manifest.json"
QUANTILES: tuple[tuple[str, float], ...] = (
    ("p1", 0.01),
    ("p5", 0.05),
    ("p25", 0.25),
    ("p50", 0.50),
    ("p75", 0.75),
    ("p95", 0.95),
    ("p99", 0.99),
)
TOP_CATEGORIES = 10

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REF = re.compile(r"^registry:(?P<name>[^@]+)@(?P<version>latest|[0-9]+)$")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as its manifest entry records it."""

    name: str
    version: int
    file: str
    sha256: str
    signature: dict[str, Any]
    registered_at: str
    source: str
    metrics: dict[str, Any] = field(default_factory=dict)
    training_profile: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"registry:{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def store_root(store: str | os.PathLike[str] | None = None) -> Path:
    """--store, else $BATCHSCORE_MODEL_STORE, else ./model_registry."""
    return Path(store if store is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`registry:NAME@VERSION` -> (NAME, VERSION); `@latest` -> (NAME, None)."""
    match = _REF.match(ref.strip())
    if match is None:
        raise ModelError(
            f"Model path '{ref}' is not a registry reference; write registry:NAME@VERSION "
            "(a number) or registry:NAME@latest."
        )
    version = match["version"]
    return match["name"], None if version == "latest" else int(version)


class ModelStore:
    """A registry folder. Cheap to create; every call reads the manifests it needs."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = store_root(root)

    # ------------------------------------------------------------ reading

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())

    def versions(self, name: str) -> list[ModelVersion]:
        manifest = self._read_manifest(name)
        return [ModelVersion(**entry) for entry in manifest.get("versions", [])]

    def list(self) -> list[ModelVersion]:
        return [v for name in self.names() for v in self.versions(name)]

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """A version by number, or the latest (`version=None`); ModelError naming the fix."""
        if name not in self.names():
            hint = did_you_mean(name, self.names())
            raise ModelError(
                f"Model registry {self.root} has no model '{name}'.{hint} "
                f"Register it with `batchscore models register {name} PATH`, or set "
                f"--store / {STORE_ENV} to the registry that has it."
            )
        versions = self.versions(name)
        if not versions:
            raise ModelError(f"Model registry {self.root}: '{name}' has no versions yet.")
        if version is None:
            return versions[-1]
        for v in versions:
            if v.version == version:
                return v
        known = ", ".join(str(v.version) for v in versions)
        raise ModelError(
            f"Model registry {self.root}: '{name}' has no version {version} (it has {known}); "
            f"use registry:{name}@latest or one of those."
        )

    def resolve(self, ref: str) -> ModelVersion:
        name, version = parse_ref(ref)
        return self.get(name, version)

    def read_verified(self, mv: ModelVersion) -> bytes:
        """The registered file's bytes, refused unless they still hash to the manifest's pin."""
        import hashlib

        path = Path(mv.file)
        try:
            data = path.read_bytes()
        except OSError:
            raise ModelError(
                f"Registered model {mv.ref}: artifact {path} is missing or unreadable; "
                "restore it, or register the model again."
            ) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != mv.sha256:
            raise ModelError(
                f"Registered model {mv.ref}: artifact {path} was tampered with (sha256 {actual}, "
                f"registered {mv.sha256}); restore the registered file or register a new version."
            )
        return data

    # ------------------------------------------------------------ writing

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
        import hashlib

        from batchscore.models.artifact import load_artifact

        if not _NAME.match(name):
            raise ModelError(
                f"Model name '{name}' is not usable in the registry; use letters, digits, "
                "'_', '.' and '-' (starting with a letter or digit)."
            )
        source = Path(path)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise ModelError(
                f"Model file {source} cannot be read: {exc.strerror or exc}."
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        pin = digest if sha256 is None else sha256
        with tempfile.TemporaryDirectory() as tmp:  # load exactly the bytes we hashed
            staged = Path(tmp) / source.name
            staged.write_bytes(data)
            artifact = load_artifact(str(staged), sha256=pin, model_name=name)
        signature = model_signature(artifact.obj, name)
        profile = profile_table(training_data) if training_data else None

        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self._read_manifest(name) if (self.root / name / MANIFEST).is_file() else {}
        versions = manifest.get("versions", [])
        number = max((int(v["version"]) for v in versions), default=0) + 1
        folder = self.root / name / f"v{number}"
        folder.mkdir(parents=True, exist_ok=False)
        target = folder / source.name
        target.write_bytes(data)
        mv = ModelVersion(
            name=name,
            version=number,
            file=str(target.resolve()),
            sha256=digest,
            signature=signature,
            registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
            source=str(source.resolve()),
            metrics=dict(metrics or {}),
            training_profile=profile,
        )
        self._write_manifest(name, {"name": name, "versions": [*versions, mv.to_json()]})
        return mv

    # ------------------------------------------------------------ manifests

    def _read_manifest(self, name: str) -> dict[str, Any]:
        path = self.root / name / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"Model registry manifest {path} cannot be read ({exc}); restore it from backup."
            ) from None
        if not isinstance(data, dict):
            raise ModelError(f"Model registry manifest {path} is not a JSON object.")
        return data

    def _write_manifest(self, name: str, manifest: dict[str, Any]) -> None:
        path = self.root / name / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=_json_default))
        os.replace(tmp, path)


def model_signature(obj: Any, name: str) -> dict[str, Any]:
    """n_features, feature names (when the model knows them), task and classes."""
    from batchscore.models.registry import compile_model

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


def check_signature(obj: Any, mv: ModelVersion, model_name: str) -> None:
    """Refuse a loaded object whose classes or input count differ from its registered ones."""
    sig = mv.signature
    where = f"Model '{model_name}' ({mv.ref})"
    want = sig.get("classes")
    raw = getattr(obj, "classes_", None)
    if want is not None and raw is not None:
        got = [str(c) for c in raw]
        if got != list(want):
            raise ModelError(
                f"{where} has classes {got} but the registry signature says {list(want)}; "
                "register the retrained model as a new version."
            )
    n = sig.get("n_features")
    declared = getattr(obj, "n_features_in_", None)
    if isinstance(n, int) and isinstance(declared, int) and declared != n:
        raise ModelError(
            f"{where} takes {declared} inputs but the registry signature says {n}; "
            "register the retrained model as a new version."
        )


# ---------------------------------------------------------------- training profile


def profile_table(location: str) -> dict[str, Any]:
    """Per-column statistics of a Parquet file/folder or a Delta table (pyarrow / deltalake)."""
    table = _read_table(location)
    columns: dict[str, Any] = {}
    for name in table.column_names:
        columns[name] = _profile_column(table.column(name))
    return {"source": str(location), "rows": table.num_rows, "columns": columns}


def _read_table(location: str) -> Any:
    path = Path(location)
    if not path.exists():
        raise DataError(
            f"Training data {location} does not exist; give a Parquet file or folder, or a "
            "Delta table path."
        )
    try:
        if (path / "_delta_log").is_dir():
            from deltalake import DeltaTable

            return DeltaTable(str(path)).to_pyarrow_table()
        import pyarrow.dataset as ds

        return ds.dataset(str(path), format="parquet").to_table()
    except Exception as exc:  # pyarrow / delta-rs errors: one line for the user
        raise DataError(
            f"Training data {location} cannot be read as Parquet or Delta: "
            f"{' '.join(str(exc).split())[:200]}."
        ) from None


def _profile_column(column: Any) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(column)
    nulls = column.null_count
    out: dict[str, Any] = {
        "type": str(column.type),
        "count": n - nulls,
        "null_rate": (nulls / n) if n else 0.0,
    }
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        values = column.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
        values = values[~np.isnan(values)]
        if len(values):
            out["mean"] = float(values.mean())
            out["std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out["min"] = float(values.min())
            out["max"] = float(values.max())
            qs = np.quantile(values, [q for _, q in QUANTILES])
            out["quantiles"] = {k: float(v) for (k, _), v in zip(QUANTILES, qs, strict=True)}
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        counts = pc.value_counts(column.drop_null()).to_pylist()
        counts.sort(key=lambda d: (-d["counts"], str(d["values"])))
        out["distinct"] = len(counts)
        out["top"] = [
            {"value": str(d["values"]), "count": int(d["counts"])} for d in counts[:TOP_CATEGORIES]
        ]
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
