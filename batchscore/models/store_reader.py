"""Reading the model store: registered versions, aliases, promotion history and pinned bytes.

A reference is `registry:NAME@VERSION` (a number), `registry:NAME@latest` (the newest
version) or `registry:NAME@ALIAS` (the version an alias such as `champion` points at, set by
`batchscore models promote`). Every resolution reads the manifest again: nothing is cached, so
a spec that names `@champion` scores with whatever version the alias points at when it runs.

The registry may live on an object store (`BATCHSCORE_MODEL_STORE=s3://bucket/registry`):
every read goes through sinks.storage (the job's storage options), so the same code reads a
local folder and a bucket prefix.

This is the part of the store that loading a `registry:NAME@VERSION` reference needs. It sits
below both `models.artifact` (which loads such references) and `models.store` (which registers
a version by loading the file with `models.artifact`), so the loader never imports the store
that imports it.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from batchscore.errors import ModelError, did_you_mean
from batchscore.sinks.storage import file_type, join, list_folder, read_bytes

STORE_ENV = "BATCHSCORE_MODEL_STORE"
DEFAULT_STORE = "model_registry"
MANIFEST = "manifest.json"
LATEST = "latest"
DEFAULT_ALIAS = "champion"
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF = re.compile(r"^registry:(?P<name>[^@]+)@(?P<version>[0-9]+|[A-Za-z_][A-Za-z0-9_]*)$")


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


@dataclass(frozen=True)
class Promotion:
    """One alias move, as the manifest's `history` records it: who, when, why, from -> to.

    `from_version` is None when the alias had never been set."""

    alias: str
    from_version: int | None
    to_version: int
    at: str
    by: str
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "from": self.from_version,
            "to": self.to_version,
            "at": self.at,
            "by": self.by,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Promotion:
        previous = entry.get("from")
        return cls(
            alias=str(entry["alias"]),
            from_version=None if previous is None else int(previous),
            to_version=int(entry["to"]),
            at=str(entry["at"]),
            by=str(entry["by"]),
            reason=entry.get("reason"),
        )


def store_root(store: str | os.PathLike[str] | None = None) -> str:
    """--store, else $BATCHSCORE_MODEL_STORE, else ./model_registry: a folder or a URI."""
    return os.fspath(store if store is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE)


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """`registry:NAME@VERSION` -> (NAME, VERSION); `@latest` -> (NAME, None);
    `@ALIAS` -> (NAME, "ALIAS")."""
    match = _REF.match(ref.strip())
    if match is None:
        raise ModelError(
            f"Model path '{ref}' is not a registry reference; write registry:NAME@VERSION "
            "(a number), registry:NAME@latest or registry:NAME@ALIAS (e.g. @champion)."
        )
    version = match["version"]
    if version == LATEST:
        return match["name"], None
    return match["name"], int(version) if version.isdigit() else version


def check_alias(alias: str) -> str:
    """An alias name usable in `registry:NAME@ALIAS`, or ModelError naming the fix."""
    if not _ALIAS.match(alias):
        raise ModelError(
            f"Alias '{alias}' is not an identifier; use letters, digits and '_', starting with "
            f"a letter or '_' (e.g. --alias {DEFAULT_ALIAS})."
        )
    if alias == LATEST:
        raise ModelError(
            "Alias 'latest' is reserved (registry:NAME@latest is always the newest version); "
            f"pick another name, e.g. --alias {DEFAULT_ALIAS}."
        )
    return alias


class StoreReader:
    """A registry folder, read only. Cheap to create; every call reads the manifests it needs."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = store_root(root)

    def path(self, *parts: str) -> str:
        """A path (or URI) inside the registry."""
        return join(self.root, *parts)

    def names(self) -> list[str]:
        if file_type(self.root) != pafs.FileType.Directory:
            return []
        return sorted(
            info.base_name
            for info in list_folder(self.root)
            if info.type == pafs.FileType.Directory
            and file_type(self.path(info.base_name, MANIFEST)) == pafs.FileType.File
        )

    def versions(self, name: str) -> list[ModelVersion]:
        manifest = self._read_manifest(name)
        return [ModelVersion(**entry) for entry in manifest.get("versions", [])]

    def list(self) -> list[ModelVersion]:
        return [v for name in self.names() for v in self.versions(name)]

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version number (empty when none was ever promoted)."""
        raw = self._read_manifest(name).get("aliases") or {}
        return {str(alias): int(number) for alias, number in sorted(raw.items())}

    def history(self, name: str) -> builtins.list[Promotion]:
        """Every promotion of the model, newest first; ModelError for an unknown model."""
        self.require(name)
        entries = self._read_manifest(name).get("history") or []
        return [Promotion.from_json(e) for e in reversed(entries)]

    def require(self, name: str) -> None:
        """ModelError (with a did-you-mean) unless the registry has the model."""
        if name not in self.names():
            hint = did_you_mean(name, self.names())
            raise ModelError(
                f"Model registry {self.root} has no model '{name}'.{hint} "
                f"Register it with `batchscore models register {name} PATH`, or set "
                f"--store / {STORE_ENV} to the registry that has it."
            )

    def get(self, name: str, version: int | str | None = None) -> ModelVersion:
        """A version by number, by alias (a str), or the latest (`version=None`);
        ModelError naming the fix."""
        self.require(name)
        versions = self.versions(name)
        if not versions:
            raise ModelError(f"Model registry {self.root}: '{name}' has no versions yet.")
        if version is None:
            return versions[-1]
        if isinstance(version, str):
            return self._by_alias(name, version, versions)
        for v in versions:
            if v.version == version:
                return v
        known = ", ".join(str(v.version) for v in versions)
        raise ModelError(
            f"Model registry {self.root}: '{name}' has no version {version} (it has {known}); "
            f"use registry:{name}@latest or one of those."
        )

    def resolve(self, ref: str) -> ModelVersion:
        """The version a reference names now (read from the manifest on every call)."""
        name, version = parse_ref(ref)
        return self.get(name, version)

    def _by_alias(self, name: str, alias: str, versions: Sequence[ModelVersion]) -> ModelVersion:
        aliases = self.aliases(name)
        fix = f"`batchscore models promote {name} --version V" + (
            "`" if alias == DEFAULT_ALIAS else f" --alias {alias}`"
        )
        if alias not in aliases:
            hint = did_you_mean(alias, aliases)
            have = ", ".join(f"{a} -> {v}" for a, v in aliases.items()) or "none"
            raise ModelError(
                f"Model registry {self.root}: '{name}' has no alias '{alias}' (aliases: "
                f"{have}).{hint} Point it at a version with {fix}."
            )
        number = aliases[alias]
        for v in versions:
            if v.version == number:
                return v
        raise ModelError(
            f"Model registry {self.root}: alias '{name}@{alias}' points at version {number}, "
            f"which the manifest does not list; move it with {fix}."
        )

    def read_verified(self, mv: ModelVersion) -> bytes:
        """The registered file's bytes, refused unless they still hash to the manifest's pin."""
        path = mv.file
        try:
            data = read_bytes(path)
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

    def _read_manifest(self, name: str) -> dict[str, Any]:
        path = self.path(name, MANIFEST)
        try:
            data = json.loads(read_bytes(path).decode())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"Model registry manifest {path} cannot be read ({exc}); restore it from backup."
            ) from None
        if not isinstance(data, dict):
            raise ModelError(f"Model registry manifest {path} is not a JSON object.")
        return data


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
