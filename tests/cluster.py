"""A standalone Spark master and N workers on 127.0.0.1, started from pyspark's own JARs.

Used by the spark-submit tests. Each worker has its own work dir and log (`worker-<i>/`), so
a test can find the executor JVM a worker started (`executor_pids`) and kill it. Every wait
loop is bounded, and `stop()` kills what it started: each daemon runs in its own process group,
which the executors and Python workers it spawns share.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent


REPO = Path(__file__).resolve().parents[1]
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


def loopback_env(**extra: str) -> dict[str, str]:
    """The environment for a child process of the suite: this interpreter, loopback Spark."""
    env = dict(os.environ)
    env.update(
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


GATE_ENV = "BATCHSCORE_TEST_GATE"
GATE_WAIT = 300.0


class GatedModel:
    """A classifier that scores as `inner` does, but, in a process whose environment names a
    gate folder (GATE_ENV: give it to executors only, with spark.executorEnv), each call first
    leaves `<gate>/started-<pid>-<n>` and waits until `<gate>/open` exists (GATE_WAIT seconds
    at most). A cluster test thereby holds scoring tasks in the middle of the scoring stage,
    sees which processes run them, acts (kills an executor), then lets them go. The driver
    (no GATE_ENV) loads and probes it without waiting. Scored by batchscore's opaque kernel,
    so its outputs are `inner`'s own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.classes_ = inner.classes_
        self.n_features_in_ = inner.n_features_in_

    def predict(self, X: Any) -> Any:
        _wait_at_gate()
        return self.inner.predict(X)

    def predict_proba(self, X: Any) -> Any:
        _wait_at_gate()
        return self.inner.predict_proba(X)


def _wait_at_gate() -> None:
    folder = os.environ.get(GATE_ENV)
    if not folder:
        return
    gate = Path(folder)
    mark = gate / f"started-{os.getpid()}-{time.monotonic_ns()}"
    mark.write_text(str(os.getpid()))
    deadline = time.monotonic() + GATE_WAIT
    while not (gate / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def gate_pids(gate: Path) -> set[int]:
    """The processes that reached the gate so far."""
    return {int(p.name.split("-")[1]) for p in gate.glob("started-*")}


@dataclass
class Worker:
    """One worker daemon: its index, process (the worker JVM: spark-class execs java) and dir."""

    index: int
    process: subprocess.Popen[bytes]
    folder: Path

    @property
    def log(self) -> Path:
        return self.folder / "worker.log"

    def executor_pids(self) -> list[int]:
        """The executor JVMs this worker runs now (children running the executor backend)."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            try:
                if EXECUTOR_CLASS in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return pids

    def runs(self, pid: int) -> bool:
        """Whether process `pid` descends from this worker (an executor or its Python)."""
        try:
            parents = psutil.Process(pid).parents()
        except psutil.NoSuchProcess:
            return False
        return any(p.pid == self.process.pid for p in parents)


class StandaloneCluster:
    """`workers` workers of `cores` cores and `memory` each. `worker_env` replaces variables
    of the daemons' environment (None values remove them): what executors inherit."""

    def __init__(
        self,
        workdir: Path,
        *,
        cores: int = 2,
        memory: str = "2g",
        workers: int = 1,
        worker_env: dict[str, str | None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.cores = cores
        self.memory = memory
        self.worker_count = workers
        self.worker_env = dict(worker_env or {})
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: list[Worker] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def env(self, folder: Path | None = None) -> dict[str, str]:
        """The daemons' environment; `folder`: a worker's own work and log dirs."""
        folder = folder or self.workdir
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(SPARK_HOME),
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_MASTER_HOST="127.0.0.1",
            PYSPARK_PYTHON=sys.executable,
            PYSPARK_DRIVER_PYTHON=sys.executable,
            SPARK_WORKER_DIR=str(folder / "work"),
            SPARK_LOG_DIR=str(folder / "logs"),
        )
        return env

    def _spawn(self, log: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start(self, timeout: float = 90) -> None:
        self.start_master(timeout)
        for _ in range(self.worker_count):
            self.start_worker(timeout)

    def start_master(self, timeout: float = 90) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            self.workdir / "master.log",
            self.env(),
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(free_port()),
        )
        _wait_for_port(self.port, timeout)

    def start_worker(self, timeout: float = 90) -> Worker:
        """One more worker, registered with the master within `timeout` seconds."""
        index = len(self.workers)
        folder = self.workdir / f"worker-{index}"
        env = self.env(folder)
        for key, value in self.worker_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        process = self._spawn(
            folder / "worker.log",
            env,
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            "127.0.0.1",
            "--webui-port",
            str(free_port()),
            "--cores",
            str(self.cores),
            "--memory",
            self.memory,
            "--work-dir",
            str(folder / "work"),
            self.url,
        )
        worker = Worker(index, process, folder)
        self.workers.append(worker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Successfully registered with master" in worker.log.read_text(errors="replace"):
                return worker
            if process.poll() is not None:
                break
            time.sleep(0.5)
        tail = worker.log.read_text(errors="replace")[-2000:]
        raise TimeoutError(
            f"worker {index} did not register with {self.url} in {timeout:.0f} s:\n{tail}"
        )

    def submit_command(self, *args: str) -> list[str]:
        """spark-submit on this master, loopback driver, this interpreter on both sides;
        later `--conf`s in `args` win."""
        return [
            str(SPARK_HOME / "bin" / "spark-submit"),
            "--master",
            self.url,
            "--conf",
            "spark.driver.host=127.0.0.1",
            "--conf",
            "spark.driver.bindAddress=127.0.0.1",
            "--conf",
            f"spark.pyspark.python={sys.executable}",
            "--conf",
            f"spark.executorEnv.PYSPARK_PYTHON={sys.executable}",
            "--conf",
            "spark.executor.memory=1g",
            "--conf",
            "spark.sql.shuffle.partitions=4",
            *args,
        ]

    def spark_submit(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.submit_command(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        """SIGTERM to every daemon's process group (executors and their Python workers too,
        even where the daemon itself is gone), then SIGKILL to what is left after 20 s."""
        for process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
            _signal_group(process, signal.SIGKILL)  # stragglers of an exited daemon
        self.processes.clear()
        self.workers.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process group `process` leads (it was started in a new session)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
