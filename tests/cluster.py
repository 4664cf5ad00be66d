"""A standalone Spark master and worker on 127.0.0.1, started from pyspark's own JARs.

Used by the spark-submit test. Every wait loop is bounded, and `stop()` kills what it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent


REPO = Path(__file__).resolve().parents[1]


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


class StandaloneCluster:
    def __init__(self, workdir: Path, *, cores: int = 2, memory: str = "2g") -> None:
        self.workdir = workdir
        self.cores = cores
        self.memory = memory
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(SPARK_HOME),
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_MASTER_HOST="127.0.0.1",
            PYSPARK_PYTHON=sys.executable,
            PYSPARK_DRIVER_PYTHON=sys.executable,
            SPARK_WORKER_DIR=str(self.workdir / "work"),
            SPARK_LOG_DIR=str(self.workdir / "logs"),
        )
        return env

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "wb")
        process = subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), *args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)

    def start(self, timeout: float = 90) -> None:
        self.start_master(timeout)
        self.start_worker(timeout)

    def start_master(self, timeout: float = 90) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(free_port()),
        )
        _wait_for_port(self.port, timeout)

    def start_worker(self, timeout: float = 90) -> None:
        self._spawn(
            "worker",
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            "127.0.0.1",
            "--webui-port",
            str(free_port()),
            "--cores",
            str(self.cores),
            "--memory",
            self.memory,
            self.url,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Successfully registered with master" in (self.workdir / "worker.log").read_text(
                errors="replace"
            ):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the worker did not register with {self.url} in {timeout:.0f} s")

    def spark_submit(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        command = [
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
        return subprocess.run(
            command, env=self.env(), capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()
