"""An S3 API server on 127.0.0.1 for the object-storage tests: moto's standalone server, started
as a subprocess on a free port (never a mock of the client), with one bucket.

`S3Server.start()` waits (bounded) until the port answers and the bucket exists; `stop()` kills
the process it started. `env` is what a job needs to reach it: the endpoint, fake credentials
(the secret is a unique string, so a test can grep output for it), a region and plain http.
`upload` copies a local folder (tables, models) into the bucket with pyarrow's S3 filesystem.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs

BUCKET = "batchscore-test"
MOTO = Path(sys.executable).with_name("moto_server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """moto_server on 127.0.0.1:<free port> with bucket BUCKET."""

    def __init__(self, bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.port = _free_port()
        self.secret = f"bs-secret-{uuid.uuid4().hex}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The variables a process needs to reach the server (delta-rs' and pyarrow's names)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "bs-test-key-id",
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def start(self, timeout: float = 60.0) -> None:
        if not MOTO.exists() and shutil.which("moto_server") is None:
            raise RuntimeError("moto_server is not installed: pip install 'moto[server]'")
        binary = str(MOTO) if MOTO.exists() else "moto_server"
        self.process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"moto_server not listening after {timeout:.0f} s") from None
                time.sleep(0.1)
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bs-test-key-id",
            aws_secret_access_key=self.secret,
        )
        client.create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key="bs-test-key-id",
            secret_key=self.secret,
            region="us-east-1",
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
        )

    def upload(self, local: Path, *parts: str) -> str:
        """Copy a local file or folder to s3://BUCKET/<parts>; returns its URI."""
        target = "/".join([self.bucket, *(p.strip("/") for p in parts)])
        pafs.copy_files(str(local), target, destination_filesystem=self.filesystem())
        return self.uri(*parts)

    def keys(self, *parts: str) -> list[str]:
        """Every key under s3://BUCKET/<parts>, relative to it."""
        base = "/".join([self.bucket, *(p.strip("/") for p in parts)])
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self.filesystem().get_file_info(selector)
        return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)

    def read(self, key: str) -> bytes:
        with self.filesystem().open_input_stream(f"{self.bucket}/{key}") as source:
            data: bytes = source.read()
        return data
