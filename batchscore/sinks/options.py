"""The Spark data source's name and the parsing of its string options.

Data source options reach Python as strings (from `.option(...)`, `.save(path)`, or a SQL
`OPTIONS (...)` clause); these helpers turn them into values with errors that name the table and
the option, for both the reader (sinks/source.py) and the write request (sinks/request.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from batchscore.errors import SinkError
from batchscore.sinks.storage import normalize_path

SOURCE_NAME = "batchscore_delta"
"""The data source's name: `spark.read.format(SOURCE_NAME)`, `df.write.format(SOURCE_NAME)`."""


def required_path(options: Mapping[str, str]) -> str:
    """The `path` option, normalized; SinkError when absent."""
    path = options.get("path")
    if not path:
        raise SinkError(
            "batchscore_delta: no table path given; pass .option('path', ...) or .save(path) / "
            ".load(path)."
        )
    return normalize_path(path)


def int_option(options: Mapping[str, str], key: str, path: str) -> int | None:
    """Option `key` as an integer; None when absent or empty."""
    value = options.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise SinkError(
            f"Delta table {path}: option {key}={value!r} is not an integer; pass a whole number."
        ) from None


def name_list(text: str | None) -> list[str] | None:
    """A JSON list or comma-separated names; None when the option is absent."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("["):
        return [str(item) for item in json.loads(text)]
    return [part.strip() for part in text.split(",") if part.strip()]
