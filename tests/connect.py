"""A Spark Connect server on 127.0.0.1, started from pyspark's own jars, and the client script
the Connect tests run in a subprocess.

`ConnectServer` runs `spark-submit --class ...SparkConnectServer` (the spark-connect jar ships in
pyspark's jars/) with master local[2], the gRPC port bound to 127.0.0.1, and the suite's Python
with the repository on PYTHONPATH for its Python workers (the data source and scoring classes
travel by reference). Waits are bounded; `stop()` kills what it started.

`python -m tests.connect URL SPEC RUN_DATE OUT.json` is the client: `bs.score` on a session
made with plain pyspark (as a notebook's), then `bs.run` and `bs.sql` with `remote=`, answers
written as JSON. A pytest process holds a classic
SparkSession, and one Python process cannot hold both kinds, so clients run apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.cluster import SPARK_HOME, free_port, loopback_env

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
SCORE_FEATURES = [
    "price",
    "quantity",
    "discount",
    "hour",
    "footfall",
    "shelf_life_days",
    "category_vec",
]
"""The demo's LightGBM model `return_risk`, fed from a join the client makes itself."""


class ConnectServer:
    """One Spark Connect server process (its own process group), logging to workdir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "connect-server.log"

    def command(self) -> list[str]:
        settings = {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "2",
            "spark.pyspark.python": sys.executable,
            "spark.executorEnv.PYTHONPATH": loopback_env()["PYTHONPATH"],
        }
        confs = [part for k, v in settings.items() for part in ("--conf", f"{k}={v}")]
        return [
            str(SPARK_HOME / "bin" / "spark-submit"),
            "--class",
            SERVER_CLASS,
            "--name",
            "batchscore-connect-test",
            "--master",
            "local[2]",
            "--driver-memory",
            "2g",
            *confs,
        ]

    def launch(self) -> None:
        """Start the server process and return at once (`wait` for it to listen)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=loopback_env(SPARK_HOME=str(SPARK_HOME)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, timeout: float = 180) -> None:
        """Return once the server's log says it listens; bounded by `timeout` seconds."""
        if self.process is None:
            raise RuntimeError("the Connect server was not launched (or is stopped)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Connect server exited: {self.tail()}")
            if "Spark Connect server started" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"no Connect server on {self.url} after {timeout:.0f} s: {self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def score_input(spark: Any, root: Path, run_date: str) -> Any:
    """One day of the demo's sales left-joined with stores and products: a plain DataFrame
    for `bs.score`, built the same way on either kind of session."""
    import batchscore as bs

    sales = bs.read_table(root / "data" / "sales", spark=spark).where(f"ds = '{run_date}'")
    stores = spark.read.parquet(str(root / "data" / "stores"))
    products = bs.read_table(root / "data" / "products", spark=spark)
    return sales.join(stores, on="store_id", how="left").join(products, on="product_id", how="left")


def scored_rows(spark: Any, root: Path, run_date: str) -> list[list[Any]]:
    """`bs.score` of the demo's LightGBM model over `score_input`, sorted, as plain lists."""
    import batchscore as bs

    model = {"name": "risk", "model": str(root / "models" / "return_risk.txt")}
    preds = bs.score(
        score_input(spark, root, run_date),
        models=[{**model, "features": SCORE_FEATURES, "output": "predict_proba"}],
        id_columns=["sale_id"],
    )
    rows = preds.select("sale_id", "prediction", "label", "probability").collect()
    return sorted([list(r) for r in rows], key=lambda r: int(r[0]))


def main(argv: list[str]) -> int:
    """The Connect client: score a DataFrame, run the job, query its table; JSON to OUT."""
    from pyspark.sql import SparkSession

    import batchscore as bs

    url, spec_path, run_date, out = argv
    notebook = SparkSession.builder.remote(url).getOrCreate()  # made outside batchscore
    root = Path(spec_path).resolve().parent.parent
    scored = scored_rows(notebook, root, run_date)
    result = bs.run(bs.load_spec(spec_path), run_date=run_date, remote=url)
    query = "SELECT model, count(*) AS n FROM p GROUP BY model ORDER BY model"
    table = {"p": result.output_path}
    counts = [list(r) for r in bs.sql(query, tables=table, remote=url).collect()]
    session = bs.spark_session(remote=url)
    answer = {
        "status": result.status,
        "rows": result.rows,
        "output": result.output_path,
        "counts": counts,
        "connect": type(session).__module__,
        "same_session": session is notebook,
        "scored": scored,
    }
    Path(out).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    from batchscore.cli import hard_exit

    hard_exit(main(sys.argv[1:]))  # exit code without delta-rs' native teardown (cli.py)
