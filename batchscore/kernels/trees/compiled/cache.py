"""The on-disk cache of compiled forests: one shared object per (model, compiler, code generator).

Where: `BATCHSCORE_CACHE_DIR` (any folder the driver can write), else `$XDG_CACHE_HOME/batchscore`,
else `~/.cache/batchscore`; entries live in its `trees/` folder. Clear it with
`rm -rf <cache>/trees` (or `batchscore cache clear`); nothing else reads it.

An entry is `<key>.so` plus `<key>.json` (the sha256 of the .so, the compiler identity, the code
generator version). The key hashes the model's IR with the compiler identity and the generator
version, so a cache built by another compiler or generator is never found; and an entry is
used only when its bytes hash to what its JSON says and the JSON names this compiler and
generator. Anything else (a truncated or tampered file, a foreign JSON) is ignored and
recompiled, never loaded. Writes go to a temporary name first and are renamed into place, so
concurrent drivers at worst compile the same model twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from batchscore.sinks.storage import write_bytes

CACHE_ENV = "BATCHSCORE_CACHE_DIR"


@dataclass(frozen=True)
class Entry:
    data: bytes
    sha256: str
    compile_seconds: float


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "batchscore"


def trees_dir() -> Path:
    return cache_root() / "trees"


def cache_key(fingerprint: str, compiler_identity: str, codegen_version: str) -> str:
    text = f"{fingerprint}|{compiler_identity}|{codegen_version}"
    return hashlib.sha256(text.encode()).hexdigest()


def lookup(key: str, compiler_identity: str, codegen_version: str) -> Entry | None:
    """The cached library for `key`, or None (missing, damaged or from another toolchain)."""
    folder = trees_dir()
    try:
        meta = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        data = (folder / f"{key}.so").read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if meta.get("compiler") != compiler_identity or meta.get("codegen") != codegen_version:
        return None
    digest = hashlib.sha256(data).hexdigest()
    if meta.get("sha256") != digest:
        return None
    seconds = meta.get("compile_seconds", 0.0)
    return Entry(data, digest, float(seconds) if isinstance(seconds, (int, float)) else 0.0)


def store(
    key: str, data: bytes, *, compiler_identity: str, codegen_version: str, seconds: float
) -> str:
    """Write an entry (best effort: an unwritable cache only costs the next run a compile)."""
    digest = hashlib.sha256(data).hexdigest()
    meta = {
        "sha256": digest,
        "compiler": compiler_identity,
        "codegen": codegen_version,
        "compile_seconds": round(seconds, 3),
        "bytes": len(data),
    }
    folder = trees_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(folder / f"{key}.so", data)
        write_bytes(folder / f"{key}.json", json.dumps(meta, indent=1).encode())
    except OSError:
        pass
    return digest


def clear() -> int:
    """Delete every cached forest; the number of files removed."""
    folder = trees_dir()
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        if path.suffix in (".so", ".json", ".tmp"):  # .tmp: an interrupted write_bytes
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed
