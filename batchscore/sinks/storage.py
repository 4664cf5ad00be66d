"""Where a Delta table lies and how its files are reached: paths, storage options, filesystems,
opening, reading and writing small files, deleting.

Every other module of the Delta layer names a table by the string `normalize_path` makes of it
and reaches its files through `filesystem`, so local paths, `file:` URIs and object-store URIs
behave alike. `storage_options` is the one place that builds what delta-rs and pyarrow get for
an object-store path (from the environment and the spec's `storage:` section, see
storage_config.py); `delta_table` and `filesystem` pass it on, and the small-file helpers
(`read_bytes`, `write_bytes`, `file_type`, `list_folder`, `join`) let model files, registry
manifests, profiles and monitoring side files live on object stores too. Partition folder names
(`partition_dir`) are spelled here too: they are paths.

No DeltaTable handle outlives a call: processes that keep deltalake scans around can abort at
interpreter exit (delta-rs #2184), so every function opens the table, reads and lets it go.
The one exception is a job run's `shared_tables` block, whose handles go when the run ends.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

import pyarrow.fs as pafs
from deltalake import DeltaTable

from batchscore.errors import SinkError, first_line
from batchscore.sinks.storage_config import configured, environment_options, merged

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
PLAIN_PATH = re.compile(r"^[A-Za-z0-9_./=+-]+$")
"""Paths Hadoop's Path parses as written (no %, :, spaces): where Spark's own readers and
writers are handed local files."""
"""The folder name (and log label) of a null partition value."""
# Characters Spark/Hive escape in partition folder names (ExternalCatalogUtils.escapePathName).
_ESCAPED = frozenset("\"#%'*/:=?\\\x7f{[]^") | frozenset(chr(c) for c in range(0x20))


def normalize_path(path: str | os.PathLike[str]) -> str:
    """Absolute local path for local tables (also for `file:` URIs); other URIs unchanged."""
    text = os.fspath(path)
    if text.startswith("file:"):
        text = urllib.parse.unquote(urllib.parse.urlparse(text).path)
    elif "://" in text:
        return text.rstrip("/")
    return os.path.abspath(os.path.expanduser(text))


def scheme(path: str) -> str:
    """The URI scheme of `path`, lower case; "" for a local path (a one-letter scheme is a
    Windows drive)."""
    head, sep, _ = path.partition("://")
    if not sep or len(head) < 2 or not head.replace("+", "").replace(".", "").isalnum():
        return "file" if path.startswith("file:") else ""
    return head.lower()


def is_object_store(path: str | os.PathLike[str]) -> bool:
    """True for a URI whose files are not on a local filesystem (s3://, abfss://, gs://...)."""
    return scheme(os.fspath(path)) not in ("", "file")


_S3 = ("s3", "s3a", "s3n")
_WRITE_SAFETY = ("conditional_put", "aws_conditional_put", "aws_s3_locking_provider")


def storage_options(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The storage options for `path` (None for a local path): the environment's object-store
    variables, then the configured ones (the spec's `storage:` section, or those the driver
    shipped to this worker), later winning. An S3 path gets `conditional_put: etag` unless a
    write-safety setting is given (AWS_CONDITIONAL_PUT, AWS_S3_LOCKING_PROVIDER): concurrent
    commits then never overwrite each other's log entry (AWS S3, MinIO and R2 support it)."""
    text = os.fspath(path)
    if not is_object_store(text):
        return None
    options = merged(environment_options(), configured())
    if scheme(text) in _S3 and not any(k.lower() in _WRITE_SAFETY for k in options):
        options["conditional_put"] = "etag"
    return options


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem base path for a path from normalize_path (or
    any URI). S3 gets a filesystem built from `storage_options` (endpoint, region, keys,
    http); other object stores go through pyarrow's own URI parsing and environment."""
    if not is_object_store(path):
        return pafs.LocalFileSystem(), normalize_path(path)
    rest = path.split("://", 1)[1].rstrip("/")
    if scheme(path) in _S3:
        options = storage_options(path) or {}
        return _s3_filesystem(tuple(sorted(options.items()))), rest
    fs, base = pafs.FileSystem.from_uri(path)
    return fs, base.rstrip("/")


@functools.lru_cache(maxsize=16)
def _s3_filesystem(options: tuple[tuple[str, str], ...]) -> pafs.FileSystem:
    """pyarrow's S3 filesystem for delta-rs-style options (cached: building one is not free).
    Settings the options lack are left to the AWS SDK's own lookup."""
    given: dict[str, str] = {}
    for key, value in options:  # sorted; normalized names, e.g. AWS_REGION -> region
        given[key.lower().removeprefix("aws_")] = value
    args: dict[str, object] = {}
    if given.get("access_key_id") and given.get("secret_access_key"):
        args["access_key"] = given["access_key_id"]
        args["secret_key"] = given["secret_access_key"]
        token = given.get("session_token") or given.get("token")
        if token:
            args["session_token"] = token
    region = given.get("region") or given.get("default_region")
    if region:
        args["region"] = region
    endpoint = given.get("endpoint_url_s3") or given.get("endpoint_url") or given.get("endpoint")
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint)
        if parsed.scheme in ("http", "https"):
            args["scheme"] = parsed.scheme
            endpoint = parsed.netloc + parsed.path.rstrip("/")
        args["endpoint_override"] = endpoint
    if "scheme" not in args and given.get("allow_http", "").lower() == "true":
        args["scheme"] = "http"
    if given.get("virtual_hosted_style_request", "").lower() == "true":
        args["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**args)


_COMMIT = re.compile(r"^\d{20}\.json$")
LogStamp = tuple[str, int, int]
"""The newest commit file of a table's log: its name, modification time (ns) and size."""
_SHARED: ContextVar[dict[str, tuple[LogStamp, DeltaTable]] | None] = ContextVar(
    "batchscore_shared_tables", default=None
)


@contextlib.contextmanager
def shared_tables() -> Iterator[None]:
    """Within this block (one job run), `delta_table` hands back the DeltaTable it opened
    before for the latest version of a local table whose log has not changed since (its newest
    commit file has the same name, time and size): a run asks the output table for its version,
    app transaction and schema about seven times, and each open read the log again (~7 ms).
    The handles go when the block ends, so none outlives the run (module docstring). Nested
    blocks share the outer one's tables."""
    if _SHARED.get() is not None:
        yield
        return
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def delta_table(path: str, *, version: int | None = None, fresh: bool = False) -> DeltaTable:
    """DeltaTable at `path` with its storage options (raises deltalake's own errors; see
    `open_table` for ones that name the table and the fix). `fresh`: a table of its own, never
    shared (`shared_tables`), for a caller that writes through it, which advances the handle.
    A `version` that is the held latest one (a scan pinned to the version the planner read) is
    that handle too."""
    shared = _SHARED.get()
    if shared is None or fresh or "://" in path:
        return DeltaTable(path, version=version, storage_options=storage_options(path))
    stamp = _log_stamp(path)
    held = shared.get(path)
    if held is not None and stamp is not None and held[0] == stamp:
        if version is None or int(held[1].version()) == version:
            return held[1]  # the latest, or the version asked for, is the one held
    if version is not None:  # an older version: a handle of its own
        return DeltaTable(path, version=version, storage_options=storage_options(path))
    table = DeltaTable(path, storage_options=storage_options(path))
    # shared only if no commit landed while it was being opened: the log is still as stamped
    if (
        stamp is not None
        and int(table.version()) == int(stamp[0][:20])
        and _log_stamp(path) == stamp
    ):
        shared[path] = (stamp, table)
    else:
        shared.pop(path, None)
    return table


def _log_stamp(path: str) -> LogStamp | None:
    """The newest commit file of the local table's log, or None (no log, unreadable)."""
    try:
        with os.scandir(os.path.join(path, "_delta_log")) as entries:
            newest = max((e for e in entries if _COMMIT.match(e.name)), key=lambda e: e.name)
            info = newest.stat()
    except (OSError, ValueError):  # ValueError: max() of no commit file
        return None
    return newest.name, info.st_mtime_ns, info.st_size


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The bytes of a file on any filesystem (FileNotFoundError / OSError as pyarrow raises)."""
    fs, path = filesystem(os.fspath(location))
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        raise IsADirectoryError(path)
    with fs.open_input_stream(path) as source:
        data: bytes = source.read()
    return data


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write a whole file so that a reader sees the old or the new bytes, never a part: a
    temporary file renamed over it locally (folders created), one PUT on object stores."""
    text = os.fspath(location)
    if is_object_store(text):
        fs, path = filesystem(text)
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    target = normalize_path(text)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def file_type(location: str | os.PathLike[str]) -> pafs.FileType:
    """File, Directory or NotFound (a prefix with objects under it counts as a Directory)."""
    fs, path = filesystem(os.fspath(location))
    return fs.get_file_info(path).type


def list_folder(location: str | os.PathLike[str]) -> list[pafs.FileInfo]:
    """The entries directly under a folder ([] when it does not exist), sorted by name."""
    fs, path = filesystem(os.fspath(location))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(infos, key=lambda info: info.base_name)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """`base/part/...` for a local path or a URI alike (URIs keep their scheme)."""
    text = os.fspath(base)
    if is_object_store(text):
        return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(text, *parts)


def not_a_table(path: str) -> SinkError:
    """The error for a path that holds no Delta table, with the fix."""
    return SinkError(
        f"{path} is not a Delta table (no _delta_log). Check the path, or create the table by "
        "writing to it with write_delta(...)."
    )


def is_delta_table(path: str | os.PathLike[str]) -> bool:
    """True when `path` holds a Delta table (a readable `_delta_log`)."""
    try:
        table_path = normalize_path(path)
        return bool(DeltaTable.is_deltatable(table_path, storage_options(table_path)))
    except Exception:
        return False


def open_table(path: str, *, version: int | None = None, fresh: bool = False) -> DeltaTable:
    """DeltaTable at `path` (normalized), with SinkErrors that name the table and the fix
    (`fresh`: as for `delta_table`)."""
    if not is_delta_table(path):
        raise not_a_table(path)
    try:
        return delta_table(path, version=version, fresh=fresh)
    except Exception as exc:
        if version is not None:
            latest = int(delta_table(path).version())
            raise SinkError(
                f"Delta table {path} has no version {version} (latest is {latest}); "
                f"pass a version between 0 and {latest}, or None for the latest."
            ) from None
        raise SinkError(
            f"Delta table {path} cannot be opened: {first_line(str(exc))}; check the path and "
            "the _delta_log files."
        ) from None


def partition_dir(column: str, value: str | None) -> str:
    """Hive-style folder name `column=value`, escaped the way Spark escapes it."""
    text = HIVE_NULL if value is None else _escape(value)
    return f"{_escape(column)}={text}"


def _escape(name: str) -> str:
    return "".join(f"%{ord(ch):02X}" if ch in _ESCAPED else ch for ch in name)


def delete_and_prune(
    fs: pafs.FileSystem, base: str, relative_paths: Iterable[str], *, stop: str = ""
) -> list[str]:
    """Delete files under `base` (missing ones count as deleted), then the folders they leave
    empty, deepest first, up to (not including) `stop` (local filesystems only). The files
    deleted, in order."""
    folders: set[str] = set()
    gone: list[str] = []
    for rel in relative_paths:
        try:
            fs.delete_file(f"{base}/{rel}")
        except FileNotFoundError:
            pass
        except OSError:
            continue
        gone.append(rel)
        parent = os.path.dirname(rel)
        while parent and parent != stop:
            folders.add(parent)
            parent = os.path.dirname(parent)
    if isinstance(fs, pafs.LocalFileSystem):
        for folder in sorted(folders, key=lambda p: p.count("/"), reverse=True):
            try:
                os.rmdir(os.path.join(base, folder))
            except OSError:
                pass
    return gone


def written_files(path: str, write_id: str, *, folders: Iterable[str] | None = None) -> list[str]:
    """Relative paths of the data files on disk that write `write_id` produced (any attempt).

    `folders` (relative) limits the search; None searches the whole table (not `_delta_log`,
    nor `_batchscore`, where the files' markers lie).
    """
    fs, base = filesystem(path)
    prefix = f"part-{write_id}-"
    found: list[str] = []
    if folders is None:
        selectors = [pafs.FileSelector(base, allow_not_found=True, recursive=True)]
    else:
        selectors = [
            pafs.FileSelector(f"{base}/{f}" if f else base, allow_not_found=True)
            for f in sorted(set(folders))
        ]
    for selector in selectors:
        for info in fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.base_name.startswith(prefix):
                continue
            rel = info.path[len(base) :].lstrip("/")
            if not rel.startswith(("_delta_log/", "_batchscore/")):
                found.append(rel)
    return found
