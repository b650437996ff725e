"""A real S3-compatible HTTP server for the tests (issue 14 item 4): moto's server
(``python -m moto.server``, from ``moto[server]``) on a free loopback port, in its own process,
stopped at the end. Not an in-process mock: boto3 talks to it over HTTP as it would to MinIO or
AWS.

- ``s3`` (fixture): an :class:`S3Server` with an empty bucket of the test's own; its ``env``
  is what a process needs to use it (``EDGEFLEET_S3_*`` and throwaway AWS credentials).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fleet.sshd import free_port

READY_TIMEOUT = 30.0
ACCESS_KEY = "AKIAEDGEFLEETTEST"
SECRET_KEY = "edgefleet-test-secret-never-printed"
_buckets = itertools.count(1)


class S3Server:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {log_path.read_text()}")
            try:
                httpx.get(self.url, timeout=2.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server not ready after {READY_TIMEOUT}s") from None
                time.sleep(0.1)  # poll interval of the deadline loop
        self.bucket = f"edgefleet-test-{next(_buckets)}"
        self.client().create_bucket(Bucket=self.bucket)

    @property
    def env(self) -> dict[str, str]:
        return {"EDGEFLEET_S3_BUCKET": self.bucket, "EDGEFLEET_S3_ENDPOINT_URL": self.url,
                "EDGEFLEET_S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def keys(self) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A running moto S3 server with an empty bucket; this process's environment points
    EdgeFleet at it (so an in-process ``cli`` builds into it)."""
    server = S3Server(tmp_path / "moto.log")
    try:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        yield server
    finally:
        server.stop()
