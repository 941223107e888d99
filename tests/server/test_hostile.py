"""Hostile and broken requests against a real regd process, over raw sockets.

These are the cases an in-process transport cannot produce: bodies cut off mid-stream,
Content-Length that lies, paths that try to climb out of the API.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.servers import RegdFactory, RegdServer
from tests.helpers.volumes import tmpfs

pytestmark = pytest.mark.e2e


def raw(server: RegdServer, request: bytes, *, close_after: float | None = None) -> bytes:
    """Send bytes as they are; return one whole response (head and Content-Length body)."""
    host, port = server.host.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        if close_after is not None:
            time.sleep(close_after)
            return b""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode()


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def stored_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "docker").rglob("*") if p.is_file())


def test_cut_off_patch_keeps_the_session_resumable(regd_server: RegdServer) -> None:
    base = regd_server.url
    location = httpx.post(f"{base}/v2/cut/blobs/uploads/").headers["Location"]
    assert httpx.patch(base + location, content=b"a" * 1000).status_code == 202
    head = f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n".encode()
    raw(regd_server, head + b"b" * 3_000_000, close_after=0.3)

    def rolled_back() -> bool:
        r = httpx.get(base + location)
        return r.status_code == 204 and r.headers["Range"] == "0-999"

    wait_for(rolled_back)
    r = httpx.patch(base + location, content=b"c" * 10, headers={"Content-Range": "1000-1009"})
    assert r.status_code == 202, r.text
    digest = "sha256:" + hashlib.sha256(b"a" * 1000 + b"c" * 10).hexdigest()
    assert httpx.put(base + location, params={"digest": digest}).status_code == 201
    assert httpx.get(f"{base}/v2/cut/blobs/{digest}").content == b"a" * 1000 + b"c" * 10


def test_cut_off_monolithic_push_leaves_nothing(regd_server: RegdServer) -> None:
    data = b"z" * 3_000_000
    digest = "sha256:" + hashlib.sha256(data + b"rest").hexdigest()
    head = (
        f"POST /v2/cut/blobs/uploads/?digest={digest} HTTP/1.1\r\n"
        "Host: x\r\nContent-Length: 3000004\r\n\r\n"
    ).encode()
    raw(regd_server, head + data, close_after=0.3)
    wait_for(lambda: not stored_files(regd_server.data_dir))
    assert httpx.head(f"{regd_server.url}/v2/cut/blobs/{digest}").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/v2/a/../b/blobs/uploads/",
        "/v2/../../etc/blobs/uploads/",
        "/v2/a/%2e%2e/b/blobs/uploads/",
        "/v2/A/blobs/uploads/",
        "/v2/a%00b/blobs/uploads/",
    ],
)
def test_paths_that_climb_are_refused(regd_server: RegdServer, path: str) -> None:
    response = raw(
        regd_server, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert status_line(response).split()[1] in ("400", "404"), response[:300]
    assert b'"errors"' in response


def test_digest_with_traversal_is_refused(regd_server: RegdServer) -> None:
    response = raw(regd_server, b"GET /v2/a/blobs/sha256:..%2f..%2f HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_line(response).split()[1] in ("400", "404")


def test_garbage_request_does_not_kill_the_server(regd_server: RegdServer) -> None:
    raw(regd_server, b"\x00\x01\x02 NOT HTTP\r\n\r\n", close_after=0.2)
    raw(regd_server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", close_after=0.2)
    assert httpx.get(f"{regd_server.url}/v2/").status_code == 200


def test_body_shorter_than_content_range(regd_server: RegdServer) -> None:
    base = regd_server.url
    location = httpx.post(f"{base}/v2/short/blobs/uploads/").headers["Location"]
    r = httpx.patch(base + location, content=b"abc", headers={"Content-Range": "0-9"})
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "SIZE_INVALID"
    assert httpx.get(base + location).headers["Range"] == "0-0"


def _bytes_read(pid: int) -> int:
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def test_pull_abandoned_by_the_client_stops_reading_the_blob(
    regd_factory: RegdFactory, database_url: str | None
) -> None:
    # The access log tells when regd has finished with the abandoned request.
    regd_server = regd_factory(
        database_url=database_url, log_level="info", env={"REGD_ACCESS_LOG": "1"}
    )
    # 128 MiB, sent as PATCHes of 8 MiB so the test process never holds it whole.
    piece = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)
    pieces = 16
    digest = "sha256:" + hashlib.sha256(piece * pieces).hexdigest()
    base = regd_server.url
    location = httpx.post(f"{base}/v2/abandon/blobs/uploads/").headers["Location"]
    for i in range(pieces):
        r = httpx.patch(
            base + location,
            content=piece,
            headers={"Content-Range": f"{i * len(piece)}-{(i + 1) * len(piece) - 1}"},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
    assert httpx.put(base + location, params={"digest": digest}, timeout=60).status_code == 201

    pid = regd_server.process.pid
    before = _bytes_read(pid)
    host, port = regd_server.host.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET /v2/abandon/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    # The access line is written once regd is done with the request, whether it stopped at
    # the disconnect or read the blob to its end, so no guess at how long reading takes.
    done = f"method=GET path=/v2/abandon/blobs/{digest} status=200"
    wait_for(lambda: done in regd_server.output(), timeout=60)
    # A server that kept reading the file for a gone client would have read all 128 MiB.
    assert _bytes_read(pid) - before < 48 * 1024 * 1024
    assert httpx.get(f"{base}/v2/").status_code == 200


def test_content_length_with_chunked_encoding_is_refused(regd_server: RegdServer) -> None:
    # Both framings on one request is the shape of request smuggling: whichever one a
    # proxy in front believes, the two would disagree on where the next request starts.
    for path in ("/v2/smuggle/blobs/uploads/", "/admin/v1/gc"):
        response = raw(
            regd_server,
            (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ).encode(),
        )
        assert status_line(response).split()[1] == "400", response[:300]
        head, _, body = response.partition(b"\r\n\r\n")
        assert b"docker-distribution-api-version: registry/2.0" in head.lower()
        assert b'"code":"UNSUPPORTED"' in body
        assert b"Transfer-Encoding" in body
    # Nothing was started by the refused request.
    r = httpx.get(f"{regd_server.url}/v2/smuggle/tags/list")
    assert r.status_code == 404


MiB = 1024 * 1024


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, mounted for the test and unmounted after it."""
    with tmpfs(tmp_path / "volume", "8m") as mountpoint:
        yield mountpoint


def test_full_disk_is_answered_and_recovered_from(
    regd_factory: RegdFactory, small_volume: Path, database_url: str | None
) -> None:
    server = regd_factory(database_url=database_url, data_dir=small_volume)
    base = server.url
    # A generous bound: the 12 MiB bodies are sent whole before the answer is read, and a
    # loaded machine may take longer than httpx's default 5 s to take them in.
    http = httpx.Client(timeout=60)
    too_big = os.urandom(12 * MiB)
    digest = "sha256:" + hashlib.sha256(too_big).hexdigest()

    r = http.post(f"{base}/v2/full/blobs/uploads/", params={"digest": digest}, content=too_big)
    assert r.status_code == 507, r.text
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert int(r.headers["Retry-After"]) > 0
    error = r.json()["errors"][0]
    assert error["code"] == "TOOMANYREQUESTS"
    assert "full" in error["message"]
    # The same through a chunked session: the session is refused, not left half-written.
    location = http.post(f"{base}/v2/full/blobs/uploads/").headers["Location"]
    r = http.patch(base + location, content=too_big)
    assert r.status_code == 507, r.text

    # No partial data is visible, and the space it took is free again.
    assert http.head(f"{base}/v2/full/blobs/{digest}").status_code == 404
    assert shutil.disk_usage(small_volume).used < 2 * MiB
    log = server.output()
    assert "Traceback" not in log
    full_lines = [line for line in log.splitlines() if "no space left" in line]
    assert len(full_lines) == 2, log

    # Without a restart, what fits is accepted again.
    fits = os.urandom(3 * MiB)
    fits_digest = "sha256:" + hashlib.sha256(fits).hexdigest()
    r = http.post(f"{base}/v2/full/blobs/uploads/", params={"digest": fits_digest}, content=fits)
    assert r.status_code == 201, r.text
    assert http.get(f"{base}/v2/full/blobs/{fits_digest}").content == fits
