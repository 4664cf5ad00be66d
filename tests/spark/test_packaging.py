"""Shipping batchscore to executors that lack it: the wheel in a packed environment.

The recipe of docs/clusters.md, offline: the project's wheel, a fresh virtual environment (made
from the base interpreter: it does not see the repository or the project venv) holding that
wheel and its dependencies at the project venv's versions (pyspark left out: executors put
their Spark's own pyspark on the path), packed with venv-pack, and passed to spark-submit with
`--archives env.tar.gz#environment` and `spark.pyspark.python=./environment/bin/python`, the
driver running from a folder where the environment lies as `environment` (client mode). The
worker's own Python has no batchscore (checked), no process of the job sees the repository (no
PYTHONPATH, other folders), and the test watches which interpreter the executors' Python
workers run.

No network: where the docs' recipe pip-installs the dependencies from an index, the test copies
the installed distributions (files and .dist-info) of the dependency closure from the project
venv, the exact versions the suite runs with; the wheel is built offline (`build_wheel`) and
installed with `pip install --no-index --no-deps`. PIP_NO_INDEX=1 is set for every process the
module starts, so a step that would reach an index fails instead. The environment is built once
per module in a few seconds (hard links where the file system allows them).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest
from deltalake import DeltaTable
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.cluster import REPO, StandaloneCluster, Worker

RUN_DATE = "2026-11-21"
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
"""The interpreter the project's venv was made from: it has no batchscore."""
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
LEFT_OUT = {"pyspark", "batchscore"}
"""Not copied: executors bring their Spark's pyspark (and py4j); batchscore comes as the wheel."""
pytestmark = pytest.mark.spark


@pytest.fixture(scope="module", autouse=True)
def _no_index() -> Iterator[None]:
    """Every process the module starts inherits PIP_NO_INDEX=1: pip fails rather than
    download (the project's rule: no network in tests)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIP_NO_INDEX", "1")
        yield


def _run(
    *command: str | Path, cwd: Path | None = None, check: bool = True, timeout: float = 300
) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
    assert not check or done.returncode == 0, (
        f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    return str(done.stdout)


def build_wheel(source: Path, out: Path) -> Path:
    """The project's wheel, as `make dist` builds it: `--no-isolation` uses the venv's own
    setuptools and wheel (dev extras), so nothing is downloaded."""
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, source)
    (wheel,) = out.glob("batchscore-*.whl")
    return wheel


def dependency_closure(requires: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions `requires` needs, transitively (extras followed, markers
    evaluated for this interpreter), less LEFT_OUT. Each must satisfy what asks for it."""
    found: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in requires]
    while todo:
        requirement, extra = todo.pop()
        key = canonicalize_name(requirement.name)
        marker = requirement.marker
        if key in LEFT_OUT or (marker is not None and not marker.evaluate({"extra": extra})):
            continue
        dist = found.setdefault(key, importlib.metadata.distribution(key))
        assert requirement.specifier.contains(dist.version, prereleases=True), (requirement, dist)
        for wanted in {"", *requirement.extras} - {e for k, e in done if k == key}:
            done.add((key, wanted))
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return list(found.values())


def copy_distribution(dist: importlib.metadata.Distribution, site: Path) -> None:
    """`dist`'s files under site-packages (its modules and .dist-info, no bytecode), hard
    linked where one file system holds both; scripts outside site-packages stay behind."""
    assert dist.files, f"{dist.metadata['Name']} has no RECORD"
    for file in dist.files:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(Path(str(dist.locate_file(file))), target)
        except OSError:
            shutil.copy2(Path(str(dist.locate_file(file))), target)


class Packed(NamedTuple):
    archive: Path
    """What venv-pack made of `folder`."""
    folder: Path


@pytest.fixture(scope="module")
def packed_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Packed]:
    """docs/clusters.md's recipe, offline: wheel -> fresh venv -> venv-pack."""
    root = tmp_path_factory.mktemp("packaging")
    source, env = root / "source", root / "env"  # a copy keeps build output out of REPO
    shutil.copytree(REPO / "batchscore", source / "batchscore", ignore=IGNORED)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    started = time.monotonic()
    build_environment(build_wheel(source, root / "dist"), env)
    # .tar.gz: Spark unpacks it with tar, keeping bin/python's symlink and modes (a plain .tar
    # goes through Java, which refuses the symlink); level 0: the archive only crosses loopback
    archive = root / "env.tar.gz"
    venv_pack = Path(sys.executable).with_name("venv-pack")
    _run(venv_pack, "-p", env, "-o", archive, "-q", "--compress-level", "0")
    print(f"packed environment built in {time.monotonic() - started:.1f} s")
    yield Packed(archive, env)
    shutil.rmtree(root, ignore_errors=True)  # a 700 MB archive: pytest keeps 3 sessions' dirs


def build_environment(wheel: Path, env: Path) -> None:
    """A venv of the base interpreter (no pip: the project's pip installs into it) with
    `wheel` and, copied from the project venv, the dependency closure the wheel declares."""
    _run(BASE_PYTHON, "-m", "venv", "--without-pip", env)
    python = env / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run(python, "-c", purelib).strip())
    pip = (sys.executable, "-m", "pip", "--python", python)
    _run(*pip, "install", "-q", "--no-index", "--no-deps", "--no-compile", wheel)
    (ours,) = importlib.metadata.distributions(name="batchscore", path=[str(site)])
    for dist in dependency_closure(ours.requires or []):
        copy_distribution(dist, site)
    where = _run(python, "-c", "import batchscore; print(batchscore.__file__)", cwd=env)
    assert Path(where.strip()).resolve().is_relative_to(site.resolve()), (where, site)
    # complete: nothing in the environment misses a dependency but batchscore's pyspark
    complaints = _run(*pip, "check", check=False).splitlines()
    assert complaints and all("requires pyspark" in line for line in complaints), complaints


def test_spark_submit_with_a_packed_environment_on_workers_without_batchscore(
    job: Path, tmp_path: Path, packed_env: Packed
) -> None:
    bare = {"PYSPARK_PYTHON": str(BASE_PYTHON), "PYTHONPATH": None}
    cluster = StandaloneCluster(tmp_path / "cluster", cores=2, memory="1g", worker_env=bare)
    missing = subprocess.run(
        [BASE_PYTHON, "-c", "import batchscore"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "No module named 'batchscore'" in missing.stderr  # the workers' own Python
    # Client mode: the driver starts Python workers too (the Delta writer's planning), with
    # spark.pyspark.python, in its own folder: the environment the archive was packed from
    # lies there as `environment` (what unpacking the archive there gives, without the copy).
    here = tmp_path / "submit"
    here.mkdir()
    (here / "environment").symlink_to(packed_env.folder, target_is_directory=True)
    python = "./environment/bin/python"
    command = cluster.submit_command(
        *("--archives", f"{packed_env.archive}#environment"),
        *("--conf", f"spark.pyspark.python={python}"),
        *("--conf", f"spark.pyspark.driver.python={python}"),
        *("--conf", f"spark.executorEnv.PYSPARK_PYTHON={python}"),
        str(REPO / "jobs" / "score.py"),
        *(str(job / "conf" / "demo.yaml"), "--run-date", RUN_DATE),
    )
    env = {**cluster.env(), "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}
    env.pop("PYTHONPATH", None)
    log = tmp_path / "submit.log"
    submit: subprocess.Popen[bytes] | None = None
    try:
        cluster.start()
        with open(log, "wb") as out:
            submit = subprocess.Popen(
                command, env=env, cwd=here, stdout=out, stderr=subprocess.STDOUT
            )
        pythons = _worker_pythons(cluster.workers[0], submit, timeout=480)
        assert submit.returncode == 0, log.read_text(errors="replace")[-4000:]
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait(timeout=30)
        cluster.stop()
    assert pythons == {python}, pythons  # every executor Python came from the archive
    assert "wrote 9,000 prediction rows" in log.read_text(errors="replace")
    table = DeltaTable(str(job / "out" / "predictions"))
    assert table.version() == 0
    assert sum(table.get_add_actions(flatten=True).column("num_records").to_pylist()) == 9_000
    for unpacked in (tmp_path / "cluster").glob("worker-*/work/*/*/environment"):
        shutil.rmtree(unpacked)  # the executor's copy (700 MB); its logs stay


def _worker_pythons(worker: Worker, submit: subprocess.Popen[bytes], timeout: float) -> set[str]:
    """Until spark-submit ends: the interpreters (argv[0]) of the Python processes under the
    worker, i.e. the executors' Python daemons and workers."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while submit.poll() is None and time.monotonic() < deadline:
        try:
            below = psutil.Process(worker.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for process in below:
            try:
                argv = process.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if "pyspark.daemon" in argv or "pyspark.worker" in argv:
                seen.add(argv[0])
        time.sleep(0.2)
    submit.wait(timeout=30)
    return seen
