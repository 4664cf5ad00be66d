"""The C compiler on the driver: found once, identified by its version, run on parallel units.

Only the driver compiles (executors load the bytes shipped with the task, see `forest`). The
compiler is `BATCHSCORE_CC` when set, else `CC`, else the first of cc, gcc, clang on PATH.
`BATCHSCORE_CC=none` turns compilation off (trees then use the numpy strategies or the
library's own predictor, as before compiled trees existed).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

CC_ENV = "BATCHSCORE_CC"
EXECUTOR_ENV = "BATCHSCORE_EXECUTOR"
"""Set in Spark's Python workers by the physical layer: a process marked so never compiles."""

FLAGS = ("-O2", "-fPIC", "-fno-plt", "-fvisibility=hidden")
"""No -ffast-math: it would drop the NaN tests (`v != v`) the missing-value rules rely on. No
-march=native: executors may run on other CPUs than the driver."""

COMPILE_TIMEOUT_S = 600
PLATFORM = f"{sys.platform}-{platform.machine()}"
"""Where a library was built; a process on another platform does not try to load it."""


class CompileError(RuntimeError):
    """The C compiler is missing, failed, or compilation was asked for on an executor."""


class LibraryLoadError(RuntimeError):
    """A compiled library cannot be used in this process (platform, damaged bytes, dlopen,
    ABI); its caller scores or counts with numpy instead."""


@dataclass(frozen=True)
class Compiler:
    command: tuple[str, ...]
    version: str  # first line of `cc --version`: part of every cache key

    @property
    def identity(self) -> str:
        return f"{' '.join(self.command)} | {self.version} | {' '.join(FLAGS)}"


def find_compiler() -> Compiler | None:
    """The compiler to use, or None when there is none (or BATCHSCORE_CC=none)."""
    setting = os.environ.get(CC_ENV) or os.environ.get("CC") or ""
    return _find(setting)


@lru_cache(maxsize=8)
def _find(setting: str) -> Compiler | None:
    if setting.strip().lower() in ("none", "off", "0"):
        return None
    candidates = [shlex.split(setting)] if setting.strip() else [["cc"], ["gcc"], ["clang"]]
    for cmd in candidates:
        exe = shutil.which(cmd[0])
        if exe is None:
            continue
        try:
            done = subprocess.run(
                [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip():
            return Compiler((exe, *cmd[1:]), done.stdout.strip().splitlines()[0])
    return None


def forbid_on_executor() -> None:
    if os.environ.get(EXECUTOR_ENV) == "1":
        raise CompileError(
            "a tree model reached a Spark executor without its compiled library; executors "
            "never compile. This is a bug in how the task was shipped; please report it."
        )


def build_shared_library(
    compiler: Compiler, units: tuple[str, ...], *, jobs: int | None = None
) -> tuple[bytes, float]:
    """Compile `units` (C sources) in parallel and link one shared object: (bytes, seconds)."""
    forbid_on_executor()
    start = time.perf_counter()
    workers = max(1, min(len(units), jobs or os.cpu_count() or 1, 8))
    with tempfile.TemporaryDirectory(prefix="batchscore-cc-") as tmp:
        sources = []
        for i, text in enumerate(units):
            path = os.path.join(tmp, f"unit{i}.c")
            with open(path, "w", encoding="ascii") as src:
                src.write(text)
            sources.append(path)

        def one(path: str) -> str:
            obj = path[:-2] + ".o"
            _run([*compiler.command, *FLAGS, "-std=c99", "-c", path, "-o", obj])
            return obj

        with ThreadPoolExecutor(workers) as pool:
            objects = list(pool.map(one, sources))
        target = os.path.join(tmp, "forest.so")
        _run([*compiler.command, "-shared", *FLAGS, "-o", target, *objects, "-lm"])
        with open(target, "rb") as lib:
            data = lib.read()
    return data, time.perf_counter() - start


def _run(cmd: list[str]) -> None:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CompileError(f"{cmd[0]} took over {COMPILE_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise CompileError(f"{cmd[0]} could not run: {exc}") from exc
    if done.returncode != 0:
        first = (done.stderr or done.stdout or "").strip().splitlines()
        raise CompileError(f"{cmd[0]} failed: {first[0] if first else f'exit {done.returncode}'}")


def load_verified(
    data: bytes,
    sha256: str,
    built_on: str,
    prefix: str,
    error: type[LibraryLoadError] = LibraryLoadError,
) -> ctypes.CDLL:
    """`load_library` after the checks every shipped library needs: built on this platform,
    bytes that hash to the sha256 recorded when they were built. `error` otherwise."""
    if built_on != PLATFORM:
        raise error(f"compiled on {built_on}, this process runs on {PLATFORM}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise error("the library's bytes do not match their sha256")
    try:
        return load_library(data, prefix)
    except OSError as exc:
        raise error(f"dlopen failed: {exc}") from exc


def load_library(data: bytes, prefix: str) -> ctypes.CDLL:
    """`dlopen` a shared object from its bytes: written to a private temporary file, loaded,
    and unlinked (Linux keeps the mapping). OSError when the bytes cannot be loaded here."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".so")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return ctypes.CDLL(path)
    finally:
        with contextlib.suppress(OSError):  # already gone: nothing left to clean up
            os.unlink(path)
