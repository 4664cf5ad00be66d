"""One SparkSession for the whole suite: starting Spark costs ~5 s, so tests share it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscore.physical.session import get_spark, prepare_environment

prepare_environment()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "morpheus"


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
def walmart(tmp_path_factory: pytest.TempPathFactory, spark: object) -> object:
    """The Walmart star schema (421,570 sales) with its two models: built once per session."""
    from batchscore.datasets.morpheus import build_walmart

    root = tmp_path_factory.mktemp("walmart")
    return build_walmart(root, conf_path=root / "conf" / "walmart.yaml", shared=SHARED_DATA,
                         spark=spark)  # fmt: skip


@pytest.fixture
def job(demo: Path, tmp_path: Path) -> Path:
    """A private copy of the demo (no output), so a case may break files without touching
    other tests."""
    import shutil

    root = tmp_path / "job"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("out", "wide.yaml"))
    return root
