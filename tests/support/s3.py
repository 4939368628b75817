"""A throwaway AWS endpoint on 127.0.0.1 (moto's server mode: S3, and IAM and SSM too) with one bucket: what
the cluster tests use as the bucket. `env` is what a node needs to reach it, as a cluster hands credentials
to its nodes' processes (the endpoint variables point the AWS SDKs here instead of at AWS)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

MOTO = Path(sys.executable).parent / "moto_server"


def available() -> str | None:
    """Why an endpoint cannot be started here, or None. moto is a dev dependency that `make test` installs, so
    the tests fail on its absence (`S3.start`) instead of skipping; the benchmarks refuse before any work."""
    return None if _server() else "moto's S3 server is not installed: pip install -e '.[dev]'"


def _server() -> str | None:
    return str(MOTO) if MOTO.exists() else shutil.which("moto_server")


class S3:
    def __init__(self, port: int, bucket: str = "switchsweep-test", host: str = "127.0.0.1"):
        self.port, self.bucket, self.host = port, bucket, host
        self.endpoint = f"http://{host}:{port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,  # boto3 and pyarrow (Ray's storage, switchsweep's)
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,  # MLflow's artifact store
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> S3:
        why = available()
        if why:
            raise RuntimeError(why)
        self.proc = subprocess.Popen(
            [_server(), "-H", self.host, "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
