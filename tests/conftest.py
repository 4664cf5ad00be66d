"""Fixtures and tiers of the suite.

Tests live in three folders, each a marker of the same name, with its own timeout per test:
`unit` (no Spark, no real dataset: `make test-fast`), `spark` (the one session-scoped local
SparkSession, or batchscore commands that start their own), `acceptance` (the real Morpheus
datasets end to end). A unit test that asks for Spark fails: it belongs in tests/spark.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscore.physical.session import get_spark, prepare_environment

prepare_environment()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "morpheus"
"""The Morpheus star schemas (docs/datasets.md): read through the `shared_data` fixture."""
TIER_TIMEOUTS = {"unit": 120, "spark": 600, "acceptance": 900}
"""Seconds one test of each tier may take before pytest-timeout stops it."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.parent.name
        if tier not in TIER_TIMEOUTS:
            continue
        if tier == "unit" and "spark" in item.fixturenames:
            raise pytest.UsageError(f"{item.nodeid} asks for Spark: move it to tests/spark")
        item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUTS[tier]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The Morpheus data folder; its tests skip, saying where to get it, when it is absent."""
    if not (SHARED_DATA / "Walmart").is_dir() or not (SHARED_DATA / "Flights").is_dir():
        pytest.skip(
            f"no Morpheus data at {SHARED_DATA.name}/ beside the repository (docs/datasets.md)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    session = get_spark(
        "local[2]",
        {
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "4g",
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo star schema (3 days x 3,000 sales) with its three models and spec."""
    from batchscore.datasets.demo import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(root, conf_path=root / "conf" / "demo.yaml", days=3, rows_per_day=3_000, seed=7)
    return root


@pytest.fixture(scope="session")
def walmart(tmp_path_factory: pytest.TempPathFactory, spark: object, shared_data: Path) -> object:
    """The Walmart star schema (421,570 sales) with its two models: built once per session."""
    from batchscore.datasets.morpheus import build_walmart

    root = tmp_path_factory.mktemp("walmart")
    return build_walmart(root, conf_path=root / "conf" / "walmart.yaml", shared=shared_data,
                         spark=spark)  # fmt: skip


@pytest.fixture
def job(demo: Path, tmp_path: Path) -> Path:
    """A private copy of the demo (no output), so a case may break files without touching
    other tests."""
    import shutil

    root = tmp_path / "job"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out", "wide.yaml"))
    return root
