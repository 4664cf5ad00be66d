"""Choosing Spark Connect (physical/connect.py) and what fails before any connection: bad URLs,
--master with --remote, a server that does not listen, sql-server over Connect. No JVM starts
here; the runs over a real Connect server are in tests/spark/test_connect.py."""

from __future__ import annotations

import time

import pytest

from batchscore.errors import SpecError, StepError
from batchscore.physical import connect
from batchscore.physical.session import get_spark
from tests.cluster import free_port


@pytest.fixture(autouse=True)
def no_remote_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (connect.REMOTE_ENV, connect.SPARK_REMOTE_ENV):
        monkeypatch.delenv(name, raising=False)


def test_remote_comes_from_the_argument_then_batchscore_remote_then_spark_remote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert connect.remote_url() is None
    monkeypatch.setenv(connect.SPARK_REMOTE_ENV, "sc://spark-remote:1")
    assert connect.remote_url() == "sc://spark-remote:1"
    monkeypatch.setenv(connect.REMOTE_ENV, "sc://batchscore-remote:2")
    assert connect.remote_url() == "sc://batchscore-remote:2"
    assert connect.remote_url("sc://argument:3") == "sc://argument:3"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:15002", "is not a Spark Connect URL"),
        ("127.0.0.1:15002;token=SECRET", "is not a Spark Connect URL"),
        ("sc://:15002", "Hostname is missing"),
        ("sc://host:1/path", "path component"),
    ],
)
def test_a_malformed_url_is_a_spec_error_that_never_prints_a_token(url: str, says: str) -> None:
    with pytest.raises(SpecError, match=says) as caught:
        connect.remote_url(url)
    assert "SECRET" not in str(caught.value)
    assert "--remote" in str(caught.value)


def test_only_host_and_port_of_a_url_are_printed() -> None:
    assert connect.endpoint("sc://example.org:443/;token=SECRET;use_ssl=true") == "example.org:443"
    assert connect.endpoint("sc://example.org") == "example.org:15002"


def test_master_and_remote_together_are_refused_before_spark_starts() -> None:
    with pytest.raises(SpecError, match="pass --master or --remote, not both"):
        get_spark("local[2]", remote="sc://127.0.0.1:15002")


def test_a_server_that_does_not_listen_fails_in_seconds_naming_it() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(StepError, match=f"sc://127.0.0.1:{port} is unreachable"):
        connect.check_reachable(f"sc://127.0.0.1:{port}/;token=SECRET")
    assert time.monotonic() - started < 10


def test_sql_server_refuses_spark_connect_with_what_to_do_instead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchscore.sinks.sql_server import serve

    monkeypatch.setenv(connect.REMOTE_ENV, "sc://127.0.0.1:15002")
    with pytest.raises(SpecError, match="no driver of its own") as caught:
        serve({"p": "/nonexistent"}, echo=lambda line: None)
    assert "batchscore sql --remote" in str(caught.value)


def test_a_plain_object_is_not_a_connect_session() -> None:
    assert connect.is_connect(object()) is False  # type: ignore[arg-type]
