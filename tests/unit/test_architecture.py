"""The package's shape, checked from its source: no import cycles, Spark only where the layers
allow it, small files, and an architecture document that names every module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import import_graph
from tests.import_graph import PACKAGE

SPARK_FREE_LAYERS = ("spec", "models", "kernels", "plan", "monitor")
"""Never import pyspark, not even inside a function: they run in plain Python processes."""
SPARK_MODULES = frozenset(
    {
        "batchscore.api",  # inside its functions only (tests/unit/test_api.py)
        "batchscore.cli",
        "batchscore.datasets._write",
        "batchscore.sinks.source",
        "batchscore.sinks.spark_io",
        "batchscore.sinks.spark_writer",
        "batchscore.sinks.sql_server",
        "batchscore.sinks.transform",
        "batchscore.sinks.writer",
    }
)
SPARK_PACKAGES = ("batchscore.physical", "batchscore.jobs")
MAX_LINES = 600
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def _modules() -> dict[str, Path]:
    return {import_graph.module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_module_of_the_package_is_in_an_import_cycle() -> None:
    assert import_graph.cycles(import_graph.graph()) == []


def test_pyspark_is_imported_only_by_the_spark_modules() -> None:
    offenders = [
        name
        for name, path in sorted(_modules().items())
        if "pyspark" in import_graph.external_roots(path)
        and name not in SPARK_MODULES
        and not name.startswith(SPARK_PACKAGES)
    ]
    assert offenders == []


@pytest.mark.parametrize("layer", SPARK_FREE_LAYERS)
def test_spark_free_layers_never_import_pyspark(layer: str) -> None:
    for path in (PACKAGE / layer).rglob("*.py"):
        assert "pyspark" not in import_graph.external_roots(path), path


def test_no_file_of_the_package_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_architecture_document_names_every_module() -> None:
    spans = re.findall(r"`([^`\s]+)`", ARCHITECTURE.read_text())
    named = {span.rsplit("/", 1)[-1] for span in spans}
    missing = [
        name
        for name, path in sorted(_modules().items())
        if path.name != "__init__.py" and not {path.name, path.stem} & named
    ]
    assert missing == []


def test_first_line_never_raises_and_names_a_silent_exception() -> None:
    from batchscore.errors import first_line

    assert first_line(ValueError("")) == "ValueError"
    assert first_line(OSError("\n  disk full \nbacktrace")) == "disk full"
    assert first_line("") == ""
