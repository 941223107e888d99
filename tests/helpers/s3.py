"""A real S3 endpoint for tests: moto's standalone server on a free port of 127.0.0.1.

    with moto_server(scratch) as s3:         # or the session fixture `s3_endpoint`
        bucket = s3.create_bucket()
        driver = S3Driver(s3.options(bucket))
        env = s3.env()                       # for a `regd serve` or `docker-registry` process

moto accepts any access key and secret. This machine sets AWS_CA_BUNDLE for its HTTPS
proxy; a client talking plain HTTP to moto must not see it, so `env()` drops it and the
session fixture removes it from the test process itself.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from regd.storage.s3 import S3Options
from tests.helpers.servers import free_port

START_TIMEOUT = 30.0
REGION = "us-east-1"


class MotoUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str = "regd-test-access"
    secret_key: str = "regd-test-secret"
    region: str = REGION

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """A new, empty bucket (a unique name unless `name` is given)."""
        bucket = name or f"regd-test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def options(self, bucket: str, **overrides: Any) -> S3Options:
        base = S3Options(
            bucket=bucket,
            region=self.region,
            endpoint_url=self.url,
            path_style=True,
            access_key=self.access_key,
            secret_key=self.secret_key,
            retries=2,
        )
        return replace(base, **overrides)

    def env(self) -> dict[str, str]:
        """The environment of a process that talks to this endpoint."""
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        env.update(
            {
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region,
            }
        )
        return env

    def regd_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """REGD_* settings that point a `regd serve` at `bucket`."""
        return {
            "REGD_STORAGE": "s3",
            "REGD_S3_BUCKET": bucket,
            "REGD_S3_PREFIX": prefix,
            "REGD_S3_ENDPOINT_URL": self.url,
            "REGD_S3_REGION": self.region,
            "REGD_S3_PATH_STYLE": "true",
            "REGD_S3_ACCESS_KEY": self.access_key,
            "REGD_S3_SECRET_KEY": self.secret_key,
        }


def moto_binary() -> str:
    found = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(found).exists():
        raise MotoUnavailable("moto_server is not installed; run scripts/setup")
    return found


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[S3Endpoint]:
    """Run a moto server until the block ends; its output goes to `log_dir`."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"moto-{port}.log"
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [moto_binary(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    endpoint = S3Endpoint(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise MotoUnavailable(f"moto_server exited: {log.read_text()[-2000:]}")
            try:
                httpx.get(endpoint.url + "/moto-api/", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise MotoUnavailable(
                        f"moto_server did not answer within {START_TIMEOUT:.0f}s"
                    ) from None
                time.sleep(0.1)
        yield endpoint
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One moto server for the whole session; each test creates its own bucket."""
    saved = os.environ.pop("AWS_CA_BUNDLE", None)
    try:
        with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
            yield endpoint
    finally:
        if saved is not None:
            os.environ["AWS_CA_BUNDLE"] = saved
