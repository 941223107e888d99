"""`regd serve` on a bucket: start-up checks, chunked pushes through multipart uploads,
redirected pulls, and nothing left behind in the bucket."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.http_api import ApiClient, expect, location, with_digest
from tests.helpers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 - the fixture
from tests.helpers.servers import RegdServer, free_port
from tests.storage.conformance import pseudo_random

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def serve_once(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REGD_", "AWS_"))}
    argv = [
        sys.executable,
        "-m",
        "regd",
        "serve",
        "--addr",
        f"127.0.0.1:{free_port()}",
        "--data-dir",
    ]
    argv.append(str(tmp_path))
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
        cwd="/",
    )


def one_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    err = done.stderr.strip()
    assert done.returncode != 0, done
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_no_bucket_stops_at_start(tmp_path: Path) -> None:
    one_line(serve_once(tmp_path, {"REGD_STORAGE": "s3"}), "s3.bucket")


def test_missing_bucket_stops_at_start(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> None:
    env = s3_endpoint.regd_env("no-such-bucket")
    one_line(serve_once(tmp_path, env), "s3://no-such-bucket", "does not exist")


def test_unreachable_endpoint_stops_at_start(
    tmp_path: Path,
    s3_endpoint: S3Endpoint,  # noqa: F811
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {**s3_endpoint.regd_env("bucket"), "REGD_S3_ENDPOINT_URL": url}
    one_line(serve_once(tmp_path, env), "s3://bucket", "cannot reach", url)


@pytest.fixture(scope="module")
def bucket(s3_endpoint: S3Endpoint) -> str:  # noqa: F811
    return s3_endpoint.create_bucket()


@pytest.fixture(scope="module")
def server(
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegdServer]:
    scratch = tmp_path_factory.mktemp("regd-s3")
    env = {
        **s3_endpoint.regd_env(bucket, prefix="reg"),
        "REGD_S3_REDIRECT": "true",
        "REGD_S3_CHUNK_SIZE": str(5 * MiB),
        # Makes the finished uploads below take the multipart copy.
        "REGD_S3_COPY_THRESHOLD": str(6 * MiB),
    }
    server = RegdServer(data_dir=scratch / "data", database_url=None, scratch=scratch, env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def objects(s3: S3Endpoint, bucket: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="reg/")
    return [o["Key"] for o in listed.get("Contents") or []]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([MiB, 1, 3 * MiB + 7, 2 * MiB, 4 * MiB + 3], id="small-and-large-chunks"),
        pytest.param([7 * MiB + 11], id="one-chunk-above-a-part"),
        pytest.param([100, 200], id="tiny"),
    ],
)
def test_chunked_push_and_redirected_pull(
    server: RegdServer,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    chunks: list[int],
) -> None:
    data = pseudo_random(sum(chunks), seed=str(chunks).encode())
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with ApiClient(server.url) as api:
        url = api.start_upload("s3/chunked")
        offset = 0
        for size in chunks:
            piece = data[offset : offset + size]
            answer = api.http.patch(
                url,
                content=piece,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + size - 1}",
                },
            )
            url = location(expect(answer, "patch", 202))
            offset += size
        expect(api.http.put(with_digest(url, digest)), "finish", 201)

        head = expect(api.http.head(f"/v2/s3/chunked/blobs/{digest}"), "head", 200)
        assert int(head.headers["content-length"]) == len(data)
        got = api.http.get(f"/v2/s3/chunked/blobs/{digest}")
        expect(got, "get", 307)
        target = got.headers["location"]
        assert target.startswith(s3_endpoint.url)
        fetched = httpx.get(target, timeout=60)
        assert fetched.status_code == 200
        assert hashlib.sha256(fetched.content).hexdigest() == digest.split(":")[1]

    blob_key = f"reg/docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
    keys = objects(s3_endpoint, bucket)
    assert blob_key in keys
    assert not [k for k in keys if "/_uploads/" in k]
    uploads = s3_endpoint.client().list_multipart_uploads(Bucket=bucket).get("Uploads") or []
    assert uploads == []


def test_cancelled_session_aborts_its_multipart_upload(
    server: RegdServer,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    with ApiClient(server.url) as api:
        url = api.start_upload("s3/cancelled")
        answer = api.http.patch(
            url,
            content=pseudo_random(6 * MiB),
            headers={"Content-Type": "application/octet-stream"},
        )
        url = location(expect(answer, "patch", 202))
        client = s3_endpoint.client()
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")
        expect(api.http.delete(url), "cancel", 204)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not [k for k in objects(s3_endpoint, bucket) if "/_uploads/" in k]
