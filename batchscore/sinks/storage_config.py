"""Object-store settings: where they come from, how Spark's Python workers get them, and how
they are kept out of everything batchscore prints or writes.

Three sources, later ones winning, give the options of an object-store path (`s3://`,
`abfss://`, `gs://`, ...); `storage.storage_options` merges them and is the one place that
builds what delta-rs (`storage_options=`) and pyarrow's filesystems (`storage.filesystem`) get:

1. the environment: every `AWS_*`, `AZURE_*` and `GOOGLE_*` variable (the names delta-rs and
   the cloud SDKs read), so plain environment variables work without any spec section;
2. the spec's `storage:` section, activated by `use_storage` when a spec is bound: each value
   is a `${VARIABLE}` reference (spec.model refuses literals, so a spec never holds a secret),
   resolved from this process's environment when the job runs;
3. in Spark's Python workers, the options the driver resolved (see below).

Why ship them: the data source's reader and writer run in Python workers that Spark starts
with its JVM's environment, which is not the driver's when the session started before the
variables were set, nor on a cluster's executors. `shipped_options` turns the resolved options
into one data source option, `SHIPPED_OPTION`, whose name matches Spark's default redaction
pattern (`spark.redaction.regex`: secret|password|token|access key), so a plan or UI that
shows options shows it redacted; the reader and writer keep the values in memory and activate
them (`storage_scope`) around their work. They never reach commit metadata, task files (the
scoring task pickled under `_batchscore/tasks/` holds paths, not options), explain output or
messages; `redact` removes secret values from any text the CLI prints, as a last guard.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping

from batchscore.errors import SpecError
from batchscore.spec.model import referenced_variable, storage_problem

ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_")
"""Environment variables with these prefixes are object-store settings (delta-rs' names)."""
SHIPPED_OPTION = "secret_storage_options"
"""The data source option that carries the driver's resolved options to the Python workers;
the word `secret` makes Spark redact it wherever it prints options."""
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "KEY", "SAS", "CREDENTIAL", "SIGNATURE")
_MIN_REDACTED = 4
"""Shorter values are not redacted: replacing 'us' or 'true' everywhere would mangle text."""

_lock = threading.Lock()
_active: dict[str, str] = {}


def resolve_storage(section: Mapping[str, str]) -> dict[str, str]:
    """The spec's `storage:` section with every `${VARIABLE}` replaced by its value from this
    process's environment; SpecError naming the key and the variable when one is unset."""
    resolved: dict[str, str] = {}
    for key, reference in section.items():
        problem = storage_problem(key, reference)
        if problem is not None:
            raise SpecError(f"Spec {problem}.")
        name = referenced_variable(reference)
        value = os.environ.get(name)
        if not value:
            raise SpecError(
                f"Spec storage.{key} references ${{{name}}}, which is not set in this "
                f"environment; export {name} before running the job (or remove storage.{key})."
            )
        resolved[key] = value
    return resolved


def use_storage(section: Mapping[str, str] | None) -> None:
    """Make the spec's storage section (resolved now) this process's configured options,
    replacing the previous spec's: called when a spec is bound, so every later step of the job
    (tables, models, side files, Spark reads and writes) uses them."""
    resolved = resolve_storage(section or {})
    with _lock:
        _active.clear()
        _active.update(resolved)


def configured() -> dict[str, str]:
    """The options activated by `use_storage` or `storage_scope` (a copy)."""
    with _lock:
        return dict(_active)


@contextlib.contextmanager
def storage_scope(options: Mapping[str, str]) -> Iterator[None]:
    """Activate `options` (the driver's, shipped to a Python worker) for the block; the
    previous configuration is restored after it. An empty mapping changes nothing."""
    if not options:
        yield
        return
    with _lock:
        before = dict(_active)
        _active.clear()
        _active.update(options)
    try:
        yield
    finally:
        with _lock:
            _active.clear()
            _active.update(before)


def environment_options() -> dict[str, str]:
    """The object-store variables of this process's environment (set, non-empty)."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) and v}


def merged(*layers: Mapping[str, str]) -> dict[str, str]:
    """The layers merged, later ones winning; keys compare case-insensitively (delta-rs reads
    AWS_REGION and aws_region alike), so an overridden key does not linger in another case."""
    out: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.items():
            for old in [k for k in out if k.lower() == key.lower()]:
                del out[old]
            out[key] = value
    return out


def encode_shipped(options: Mapping[str, str]) -> dict[str, str]:
    """The data source options that carry `options` to the Python workers ({} for none)."""
    return {SHIPPED_OPTION: json.dumps(dict(options), sort_keys=True)} if options else {}


def decode_shipped(options: Mapping[str, str]) -> dict[str, str]:
    """The storage options a data source's options carry ({} when none)."""
    text = options.get(SHIPPED_OPTION)
    if not text:
        return {}
    try:
        loaded = json.loads(text)
    except ValueError:
        loaded = None
    if not isinstance(loaded, dict):
        raise SpecError(
            f"batchscore_delta: option {SHIPPED_OPTION} is not a JSON object; leave it to "
            "batchscore (read_delta / write_delta set it)."
        )
    return {str(k): str(v) for k, v in loaded.items()}


def secret_values() -> list[str]:
    """Values of the configured and environment options whose names look secret (keys,
    tokens, passwords, SAS), longest first, for `redact`."""
    found = {
        value
        for key, value in merged(environment_options(), configured()).items()
        if any(word in key.upper() for word in _SECRET_WORDS) and len(value) >= _MIN_REDACTED
    }
    return sorted(found, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret storage value replaced by `***` (the CLI's last guard on what
    it prints: a library's error message could quote a credential)."""
    for value in secret_values():
        text = text.replace(value, "***")
    return text
