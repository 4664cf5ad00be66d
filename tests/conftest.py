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
