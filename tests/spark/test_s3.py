"""Object storage end to end, on moto's S3 server on 127.0.0.1 (tests/s3.py): every table, model
file, registry, profile, output, quarantine and monitoring table of a job on `s3://`.

Results are compared with the same job on local disk, row for row. Also on S3: writers racing
on one table (one conflict refused, nothing lost), kill -9 while a run writes (the table stays
consistent, a rerun is exact), vacuum / optimize / history / sql, and the secret never printed
nor stored (stdout, stderr, Spark's logs and event log, explain, errors, every object written).

One server for the module; the session's SparkSession was started before the S3 variables were
set, so its Python workers lack them: they get the driver's options from the data source
(sinks/storage_config.py), which is what these tests exercise.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable

import batchscore as bs
from batchscore.datasets._write import sha256_file
from batchscore.datasets.demo import FEATURES, MODEL_FILES, MODEL_OUTPUTS
from batchscore.errors import CommitConflictError
from batchscore.models.store import ModelStore
from batchscore.monitor.report import report_html
from batchscore.sinks.checkpoints import CHECKPOINT_INTERVAL
from batchscore.sinks.commit import commit_files
from batchscore.sinks.files import TaskWriter
from batchscore.sinks.request import WritePlan, WriteRequest
from batchscore.sinks.schema import delta_arrow_schema
from batchscore.sinks.storage import delta_table, filesystem, storage_options
from batchscore.sinks.storage_config import use_storage
from tests.cluster import REPO, loopback_env
from tests.s3 import S3Server

DAYS = ["2026-11-19", "2026-11-20", "2026-11-21"]
ROWS_PER_DAY = 3_000
MODELS = 3
REGISTERED = "basket_class"
"""Loaded as registry:basket_class@champion from a registry on S3 (or on disk for the twin)."""
PROFILED = "revenue_glm"
"""Has a training profile (saved on S3, read by validation and monitoring)."""
CLI = [sys.executable, "-m", "batchscore"]
IGNORED = {"run_id", "scored_at", "computed_at", "quarantined_at"}
"""Columns that differ between any two runs."""


@dataclass
class Place:
    """Where one run's inputs and outputs live: s3:// URIs or local folders."""

    data: str
    models: str
    out: str
    registry: str

    def path(self, base: str, *parts: str) -> str:
        return "/".join([base.rstrip("/"), *parts])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env.items():
            patch.setenv(key, value)
        patch.setenv("BATCHSCORE_CACHE_DIR", str(cache))  # model files fetched from S3 land here
        try:
            yield server
        finally:
            use_storage(None)
            server.stop()


def demo_spec(place: Place, *, models: dict[str, str], profile: str, extra: str = "") -> str:
    """The demo job (conftest's `demo`) with a registry model, a training profile, a validation
    rule and a quarantining join (both to output.quarantine) and a monitoring table."""
    lines = [
        "name: retail_s3",
        "tables:",
        f"  sales: {{path: {place.path(place.data, 'sales')}, format: delta, partition_by: [ds]}}",
        f"  stores: {{path: {place.path(place.data, 'stores')}, format: parquet, key: store_id}}",
        f"  products: {{path: {place.path(place.data, 'products')}, format: delta, "
        "key: product_id}",
        "source:",
        "  table: sales",
        "  where: \"ds = '{run_date}'\"",
        "  joins:",
        "    - {table: stores, on: {store_id: store_id}, on_missing: quarantine}",
        "    - {table: products, on: {product_id: product_id}}",
        "  id_columns: [sale_id, ds]",
        "models:",
    ]
    for name, file in MODEL_FILES.items():
        if name == REGISTERED:
            lines += [f"  - name: {name}", f"    path: registry:{name}@champion"]
        else:
            lines += [f"  - name: {name}", f"    path: {place.path(place.models, file)}"]
            if name in models:
                lines.append(f"    sha256: {models[name]}")
        if name == PROFILED:
            lines.append(f"    profile: {profile}")
        lines += [
            f"    features: [{', '.join(FEATURES[name])}]",
            f"    output: {MODEL_OUTPUTS[name]}",
        ]
    lines += [
        "output:",
        f"  path: {place.path(place.out, 'predictions')}",
        f"  quarantine: {place.path(place.out, 'held')}",
        "  partition_by: [ds]",
        "  mode: overwrite_partitions",
        "validation:",
        "  profile_rules: false",
        "  rules:",
        "    - {name: cheap, expr: 'sales.price < 20', action: quarantine}",
        f"monitoring: {{table: {place.path(place.out, 'monitoring')}}}",
    ]
    return "\n".join(lines) + "\n" + extra


def _pins(demo: Path) -> dict[str, str]:
    return {
        name: sha256_file(demo / "models" / file)
        for name, file in MODEL_FILES.items()
        if not file.endswith(".txt")
    }


@dataclass
class DemoRuns:
    """The demo job run on S3 and on disk for the last day, and what they need."""

    s3_place: Place
    local_place: Place
    s3_spec: Path
    local_spec: Path
    pins: dict[str, str]
    s3_result: Any
    local_result: Any


def _register(root: str, demo: Path) -> None:
    store = ModelStore(root)
    store.register(REGISTERED, demo / "models" / MODEL_FILES[REGISTERED])
    store.promote(REGISTERED, 1)


@pytest.fixture(scope="module")
def demo_runs(
    s3: S3Server, demo: Path, spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoRuns]:
    from batchscore.jobs.profiling import profile_spec

    root = tmp_path_factory.mktemp("s3demo")
    s3.upload(demo / "data", "demo", "data")
    s3.upload(demo / "models", "demo", "models")
    remote = Place(*(s3.uri("demo", part) for part in ("data", "models", "out", "registry")))
    local = Place(str(demo / "data"), str(demo / "models"), str(root / "out"), str(root / "reg"))
    _register(remote.registry, demo)
    _register(local.registry, demo)
    pins = _pins(demo)
    profiles = {"s3": s3.uri("demo", "profiles", PROFILED), "local": str(root / "profile")}
    specs = {"s3": root / "s3.yaml", "local": root / "local.yaml"}
    for key, place in (("s3", remote), ("local", local)):
        specs[key].write_text(demo_spec(place, models=pins, profile=profiles[key]))
    # The training profile, made by profiling the S3 job's inputs on the first day.
    loaded = bs.load_spec(specs["s3"])
    unprofiled = [m.model_copy(update={"profile": None}) for m in loaded.models]
    bare = loaded.model_copy(update={"validation": None, "models": unprofiled})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BATCHSCORE_MODEL_STORE", remote.registry)
        made = profile_spec(spark, bare, run_date=DAYS[0], model=PROFILED)[PROFILED]
    assert made.save(profiles["s3"]) == profiles["s3"] + "/profile.json"
    made.save(profiles["local"])
    results = {}
    for key, place in (("s3", remote), ("local", local)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("BATCHSCORE_MODEL_STORE", place.registry)
            results[key] = bs.run(specs[key], run_date=DAYS[-1], spark=spark)
    yield DemoRuns(
        remote, local, specs["s3"], specs["local"], pins, results["s3"], results["local"]
    )


def _rows(path: str, *, drop: set[str] = IGNORED) -> list[tuple[Any, ...]]:
    table = pa.table(delta_table(path).to_pyarrow_table())
    keep = sorted(c for c in table.column_names if c not in drop)
    return sorted(zip(*(table[c].to_pylist() for c in keep), strict=True), key=repr)


def _same_metrics(s3_path: str, local_path: str) -> None:
    """Monitoring rows match; metric values to 1e-9 (sums may run in another order)."""
    key = ("job", "run_date", "model", "kind", "feature", "metric", "baseline")

    def load(path: str) -> dict[tuple[Any, ...], Any]:
        rows = pa.table(delta_table(path).to_pyarrow_table()).to_pylist()
        return {tuple(r[k] for k in key): r["value"] for r in rows}

    remote, local = load(s3_path), load(local_path)
    assert remote.keys() == local.keys() and remote
    for name, value in local.items():
        other = remote[name]
        if value is None or other is None or math.isnan(value):
            assert (other is None or math.isnan(other)) == (value is None or math.isnan(value))
        else:
            assert math.isclose(other, value, rel_tol=1e-9, abs_tol=1e-12), name


def test_demo_job_on_s3_equals_the_same_job_on_disk(s3: S3Server, demo_runs: DemoRuns) -> None:
    runs = demo_runs
    assert runs.s3_result.status == runs.local_result.status == "committed"
    held = runs.s3_result.quarantined
    assert held == runs.local_result.quarantined > 0
    assert runs.s3_result.rows == runs.local_result.rows == (ROWS_PER_DAY - held) * MODELS
    remote, local = runs.s3_place, runs.local_place
    for table in ("predictions", "held"):
        got = _rows(remote.path(remote.out, table))
        assert got and got == _rows(local.path(local.out, table)), table
    _same_metrics(remote.path(remote.out, "monitoring"), local.path(local.out, "monitoring"))
    # the monitoring side files (profiles, histograms) and the report that reads them
    side = s3.keys("demo", "out", "monitoring", "_batchscore")
    assert f"histograms/retail_s3/{DAYS[-1]}.json" in side
    assert f"runs/retail_s3/{DAYS[-1]}.json" in side
    page = report_html(remote.path(remote.out, "monitoring"), job="retail_s3")
    assert "No histograms file" not in page and "cannot be read" not in page
    # every S3 model file was fetched into the local cache, under its sha256
    cached = {p.name for p in (Path(os.environ["BATCHSCORE_CACHE_DIR"]) / "models").iterdir()}
    assert set(runs.pins.values()) <= cached
    # explain names the reader of each scan
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BATCHSCORE_MODEL_STORE", remote.registry)
        text = bs.explain(runs.s3_spec, run_date=DAYS[-1])
    assert text.count("reader: batchscore's (delta-rs/pyarrow") == 3


def test_factorized_star_job_on_s3_equals_the_same_job_on_disk(
    s3: S3Server, spark: Any, tmp_path: Path
) -> None:
    from tests.star import build_star

    sizes = {"fact_rows": 1_000, "a_rows": 40, "b_rows": 30, "c_rows": 12}
    star = build_star(tmp_path / "star", seed=11, missing=0.1, nan_rate=0.05, **sizes)
    base = s3.upload(tmp_path / "star", "star")
    text = star.spec.read_text()
    local_text = text.replace("path: out,", f"path: {tmp_path / 'local_out'},")
    s3_text = text
    for name in ("fact", "dim_a", "dim_b", "dim_c", "out"):
        s3_text = s3_text.replace(f"path: {name},", f"path: {base}/{name},")
    for name in star.models:
        s3_text = s3_text.replace(f"path: {name}.joblib", f"path: {base}/{name}.joblib")
    assert s3_text.count(base) == 5 + len(star.models)
    (tmp_path / "star" / "local.yaml").write_text(local_text)
    (tmp_path / "star" / "s3.yaml").write_text(s3_text)
    explained = bs.explain(tmp_path / "star" / "s3.yaml", run_date="2026-11-21")
    assert "PartialScore" in explained
    got = bs.run(tmp_path / "star" / "s3.yaml", run_date="2026-11-21", spark=spark)
    want = bs.run(tmp_path / "star" / "local.yaml", run_date="2026-11-21", spark=spark)
    assert got.status == want.status == "committed"
    assert got.rows == want.rows == 500 * len(star.models)
    assert _rows(f"{base}/out") == _rows(str(tmp_path / "local_out"))


def test_two_writers_race_on_one_s3_table(s3: S3Server, spark: Any) -> None:
    from batchscore.sinks.maintenance import data_files_on_disk, live_files
    from batchscore.sinks.spark_io import write_delta

    path = s3.uri("race", uuid.uuid4().hex[:8])

    def frame(tag: str, n: int = 40) -> Any:
        return spark.createDataFrame(
            [(i, "a", tag) for i in range(n)], "id long, ds string, tag string"
        )

    write_delta(frame("base"), path, mode="append", partition_by=["ds"])
    initial = data_files_on_disk(path)
    outcomes: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def write(tag: str) -> None:
        barrier.wait(timeout=60)
        try:
            outcomes[tag] = write_delta(
                frame(tag), path, mode="overwrite_partitions", read_version=0
            )
        except Exception as exc:  # recorded, asserted below
            outcomes[tag] = exc

    threads = [threading.Thread(target=write, args=(tag,)) for tag in ("p", "q")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    lost = [t for t, o in outcomes.items() if isinstance(o, CommitConflictError)]
    won = [t for t, o in outcomes.items() if not isinstance(o, Exception) and o.committed]
    assert len(lost) == 1 and len(won) == 1, outcomes
    assert "partition ds=a" in str(outcomes[lost[0]]) and outcomes[won[0]].version == 1
    table = pa.table(delta_table(path).to_pyarrow_table())
    assert table.num_rows == 40 and set(table["tag"].to_pylist()) == {won[0]}
    assert data_files_on_disk(path) == live_files(path) | initial  # the loser left no file


def test_kill_minus_nine_while_writing_to_s3_then_rerun(
    s3: S3Server, demo_runs: DemoRuns, spark: Any, tmp_path: Path
) -> None:
    """A forced rerun of the committed day, killed (the whole process group) as soon as one of
    its data files is on S3: the commit comes next. The table must read back as one complete
    run of the day, and a rerun must give the local run's rows exactly."""
    from batchscore.sinks.maintenance import orphan_files, vacuum

    runs = demo_runs
    out = runs.s3_place.path(runs.s3_place.out, "predictions")
    committed = _rows(out, drop=set())
    known = set(s3.keys("demo", "out", "predictions", f"ds={DAYS[-1]}"))
    log = tmp_path / "killed.log"
    with open(log, "wb") as handle:
        child = subprocess.Popen(
            [*CLI, "run", str(runs.s3_spec), "--run-date", DAYS[-1], "--force", "--quiet"],
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=loopback_env(BATCHSCORE_MODEL_STORE=runs.s3_place.registry),
            start_new_session=True,
        )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if set(s3.keys("demo", "out", "predictions", f"ds={DAYS[-1]}")) - known:
                break  # a data file of the run is on S3; the commit comes next
            time.sleep(0.2)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    # The table reads back as one complete run of the day: the old one, or the killed one if
    # its commit landed before the kill.
    table = pa.table(delta_table(out).to_pyarrow_table())
    assert len(set(table["run_id"].to_pylist())) == 1
    assert table.num_rows == len(committed)
    if _rows(out, drop=set()) == committed:  # killed before its commit
        assert orphan_files(out)  # the killed run's files, which the log does not reference
    vacuum(out, retain_hours=0, enforce_retention=False)
    assert orphan_files(out) == set()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BATCHSCORE_MODEL_STORE", runs.s3_place.registry)
        rerun = bs.run(runs.s3_spec, run_date=DAYS[-1], spark=spark, force=True)
    assert rerun.status == "committed"
    assert _rows(out) == _rows(runs.local_place.path(runs.local_place.out, "predictions"))
    for key in s3.keys("demo", "out"):  # what the killed run left (a task file) holds no secret
        assert s3.secret.encode() not in s3.read(f"demo/out/{key}"), key


def test_vacuum_optimize_history_and_sql_on_s3(
    s3: S3Server, demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchscore.cli import run_cli

    out = demo_runs.s3_place.path(demo_runs.s3_place.out, "predictions")
    before = _rows(out, drop=set())
    assert run_cli(["history", out]) == 0
    history = capsys.readouterr().out
    assert "job=retail_s3" in history and f"run_date={DAYS[-1]}" in history
    query = "SELECT model, count(*) AS n FROM p GROUP BY model ORDER BY model"
    assert run_cli(["sql", query, "--table", f"p={out}"]) == 0
    printed = capsys.readouterr().out
    per_model = ROWS_PER_DAY - demo_runs.s3_result.quarantined
    assert all(f"| {m}" in printed for m in MODEL_FILES) and f"| {per_model}" in printed
    assert run_cli(["optimize", out]) == 0
    assert "optimize" in capsys.readouterr().out
    assert run_cli(["vacuum", out, "--retain-hours", "0", "--no-enforce-retention"]) == 0
    capsys.readouterr()
    assert _rows(out, drop=set()) == before  # same rows, whatever the files


def _log4j(tmp_path: Path) -> Path:
    """Spark's logging at INFO on stderr, so the test greps everything Spark says."""
    conf = tmp_path / "log4j2.properties"
    conf.write_text(
        "rootLogger.level = info\nrootLogger.appenderRef.stderr.ref = console\n"
        "appender.console.type = Console\nappender.console.name = console\n"
        "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
        "appender.console.layout.pattern = %p %c{1}: %m%n%ex\n"
        # explicitly configured: Spark's shell filter would drop INFO of inherited levels
        "logger.spark.name = org.apache.spark\nlogger.spark.level = info\n"
    )
    return conf


def test_secrets_are_never_printed_nor_stored(
    s3: S3Server, demo_runs: DemoRuns, tmp_path: Path
) -> None:
    runs = demo_runs
    place = replace(runs.s3_place, out=s3.uri("secret", "out"))
    storage = (
        "storage:\n  AWS_ENDPOINT_URL: ${BS_S3_URL}\n  AWS_ACCESS_KEY_ID: ${BS_S3_KEY_ID}\n"
        "  AWS_SECRET_ACCESS_KEY: ${BS_S3_SECRET}\n  AWS_REGION: ${BS_S3_REGION}\n"
        "  AWS_ALLOW_HTTP: ${BS_S3_HTTP}\n"
    )
    profile = s3.uri("demo", "profiles", PROFILED)
    spec = tmp_path / "job.yaml"
    spec.write_text(demo_spec(place, models=runs.pins, profile=profile, extra=storage))
    wrong = dict(runs.pins, revenue_glm="ab" * 32)
    bad = tmp_path / "bad.yaml"
    bad.write_text(demo_spec(place, models=wrong, profile=profile, extra=storage))
    events = tmp_path / "events"
    events.mkdir()
    # The S3 settings only under other names, reachable through the spec's storage section.
    env = {k: v for k, v in loopback_env().items() if not k.startswith("AWS_")}
    env.update(
        BS_S3_URL=s3.endpoint,
        BS_S3_KEY_ID="bs-test-key-id",
        BS_S3_SECRET=s3.secret,
        BS_S3_REGION="us-east-1",
        BS_S3_HTTP="true",
        AWS_SECRET_ACCESS_KEY=s3.secret,  # in the environment too, unused without an endpoint
        AWS_EC2_METADATA_DISABLED="true",
        BATCHSCORE_MODEL_STORE=place.registry,
        BATCHSCORE_SPARK_LOG="1",  # Spark's own logging, at INFO (_log4j), and its event log
        BATCHSCORE_DEBUG="1",  # errors print their traceback too
        PYSPARK_SUBMIT_ARGS=" ".join(
            [
                f"--driver-java-options -Dlog4j2.configurationFile=file:{_log4j(tmp_path)}",
                "--conf spark.eventLog.enabled=true --conf spark.eventLog.compress=false",
                f"--conf spark.eventLog.dir=file:{events} pyspark-shell",
            ]
        ),
    )

    def cli(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            cwd=REPO,
            env={**env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=400,
        )

    explained = cli("explain", str(spec), "--run-date", DAYS[-1])
    assert explained.returncode == 0, explained.stderr[-3000:]
    run = cli("run", str(spec), "--run-date", DAYS[-1])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "\nINFO " in run.stderr  # Spark's own logging was on, at INFO
    failed = cli("run", str(bad), "--run-date", DAYS[-1])
    assert failed.returncode == 2 and "but the spec pins" in failed.stderr
    # a command without a spec takes the settings from the environment
    history = cli("history", place.path(place.out, "predictions"), "--json", extra=s3.env)
    assert history.returncode == 0 and "retail_s3" in history.stdout
    for done in (explained, run, failed, history):
        assert s3.secret not in done.stdout and s3.secret not in done.stderr
    logs = [p.read_bytes() for p in events.rglob("*") if p.is_file()]
    assert logs and all(s3.secret.encode() not in data for data in logs)
    keys = s3.keys("secret")
    assert any(k.startswith("out/predictions/_delta_log/") for k in keys)
    assert all(s3.secret.encode() not in s3.read(f"secret/{key}") for key in keys)
    first = s3.read(f"secret/out/predictions/_delta_log/{'0' * 20}.json").decode()
    assert "batchscore.run_id" in first  # the lineage is there, the secret is not


def test_every_tenth_commit_checkpoints_an_s3_table(s3: S3Server) -> None:
    """The checkpoint goes through the same storage options as the commit (sinks.checkpoints):
    readers of the object-store table start from it."""
    path = s3.uri("checkpointed")
    schema = pa.schema([("id", pa.int64()), ("ds", pa.string())])
    batch = pa.record_batch({"id": [1], "ds": ["a"]}, schema=schema)
    for version in range(CHECKPOINT_INTERVAL + 1):
        request = WriteRequest(path, "append", partition_by=["ds"], write_id=f"c{version}")
        task = TaskWriter(WritePlan(request, delta_arrow_schema(schema, path=path)))
        task.add(batch)
        assert commit_files(task.plan, task.finish()) == version
    fs, base = filesystem(path)
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{base}/_delta_log"))]
    assert f"{CHECKPOINT_INTERVAL:020d}.checkpoint.parquet" in names, names
    assert "_last_checkpoint" in names
    assert DeltaTable(path, storage_options=storage_options(path)).version() == CHECKPOINT_INTERVAL
