"""The spec's `storage:` section and the object-store options built from it (no Spark, no
server): literal values refused without being quoted, references resolved from the
environment, one merge for delta-rs and pyarrow, the options shipped to Python workers, and
redaction."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from batchscore.errors import SpecError
from batchscore.sinks import storage_config as config
from batchscore.sinks.storage import filesystem, is_object_store, scheme, storage_options
from batchscore.spec.load import parse_spec

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-literal"
BASE = """name: j
tables: {t: {path: /data/t, format: delta}}
source: {table: t}
models: [{name: m, path: /models/m.txt, features: [a]}]
output: {path: /out/p}
"""


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(config.ENV_PREFIXES):
            monkeypatch.delenv(name)
    config.use_storage(None)


def test_a_literal_secret_is_refused_naming_the_key_never_the_value() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(BASE + f"storage:\n  AWS_SECRET_ACCESS_KEY: {SECRET}\n", source="job.yaml")
    message = str(err.value)
    assert SECRET not in message
    assert "job.yaml line 6" in message and "storage.AWS_SECRET_ACCESS_KEY" in message
    assert "${AWS_SECRET_ACCESS_KEY}" in message and "environment" in message
    for value in ("12345678", "true", "[a, b]", "'${A}${B}'", "'prefix-${A}'"):
        with pytest.raises(SpecError, match=r"literal value|mapping") as err:
            parse_spec(BASE + f"storage:\n  AWS_SESSION_TOKEN: {value}\n")
        assert value.strip("'") not in str(err.value).replace("${ENV_VAR}", "")
    with pytest.raises(SpecError, match="not an option name"):
        parse_spec(BASE + "storage:\n  'bad key': ${A}\n")
    with pytest.raises(SpecError, match="mapping of option names"):
        parse_spec(BASE + "storage: ${A}\n")


def test_references_are_kept_and_resolved_when_the_job_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = parse_spec(
        BASE + "storage:\n  AWS_ENDPOINT_URL: ${MY_URL}\n  AWS_SECRET_ACCESS_KEY: ${MY_KEY}\n"
    )
    assert spec.storage == {"AWS_ENDPOINT_URL": "${MY_URL}", "AWS_SECRET_ACCESS_KEY": "${MY_KEY}"}
    with pytest.raises(SpecError, match=r"storage.AWS_ENDPOINT_URL references \$\{MY_URL\}"):
        config.use_storage(spec.storage)
    monkeypatch.setenv("MY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MY_KEY", SECRET)
    config.use_storage(spec.storage)
    assert config.configured()["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert storage_options("/local/table") is None
    options = storage_options("s3://bucket/t")
    assert options is not None
    assert options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert options["conditional_put"] == "etag"  # safe concurrent commits by default
    config.use_storage({})  # the next spec's section replaces this one's
    assert config.configured() == {}


def test_environment_then_spec_later_wins_case_insensitively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_S3_LOCKING_PROVIDER", "dynamodb")
    monkeypatch.setenv("REGION_FOR_JOB", "us-east-2")
    config.use_storage({"aws_region": "${REGION_FOR_JOB}"})
    options = storage_options("s3a://bucket/t")
    assert options == {"AWS_S3_LOCKING_PROVIDER": "dynamodb", "aws_region": "us-east-2"}
    assert storage_options("abfss://c@acct.dfs.core.windows.net/t") == options  # no S3 default


def test_shipped_options_round_trip_and_scope_restores() -> None:
    shipped = config.encode_shipped({"AWS_SECRET_ACCESS_KEY": SECRET})
    assert list(shipped) == [config.SHIPPED_OPTION] and "secret" in config.SHIPPED_OPTION
    assert config.encode_shipped({}) == {}
    decoded = config.decode_shipped({**shipped, "path": "s3://b/t"})
    assert decoded == {"AWS_SECRET_ACCESS_KEY": SECRET}
    with config.storage_scope(decoded):
        assert storage_options("s3://b/t") == {"AWS_SECRET_ACCESS_KEY": SECRET, "conditional_put":
                                               "etag"}  # fmt: skip
    assert config.configured() == {}
    with pytest.raises(SpecError, match="not a JSON object"):
        config.decode_shipped({config.SHIPPED_OPTION: "[1]"})


def test_redact_hides_secret_values_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    text = f"error: s3 said no to {SECRET} in us-east-1"
    assert config.redact(text) == "error: s3 said no to *** in us-east-1"


def test_s3_filesystem_follows_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    fs, base = filesystem("s3://bucket/some/table/")
    assert isinstance(fs, pafs.S3FileSystem) and base == "bucket/some/table"
    assert fs.region == "eu-central-1"
    args = fs.__reduce__()[1][0]  # pyarrow pickles the filesystem by its arguments
    assert args["endpoint_override"] == "127.0.0.1:9" and args["scheme"] == "http"
    local, path = filesystem("relative/t")
    assert isinstance(local, pafs.LocalFileSystem) and Path(path).is_absolute()


def test_schemes() -> None:
    assert [scheme(p) for p in ("s3://b/k", "S3A://b/k", "/tmp/x", "file:///x", "C://x")] == [
        "s3",
        "s3a",
        "",
        "file",
        "",
    ]
    assert is_object_store("gs://b/k") and not is_object_store("file:/tmp/x")


def test_flow_style_references_must_be_quoted_and_the_error_says_so() -> None:
    with pytest.raises(SpecError, match=r'quote \$\{VAR\} references \("\$\{VAR\}"\)'):
        parse_spec(BASE + "storage: {AWS_ENDPOINT_URL: ${AWS_ENDPOINT_URL}}\n")
    spec = parse_spec(BASE + 'storage: {AWS_ENDPOINT_URL: "${AWS_ENDPOINT_URL}"}\n')
    assert spec.storage == {"AWS_ENDPOINT_URL": "${AWS_ENDPOINT_URL}"}
