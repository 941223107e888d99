"""A real regd whose SQLite writer meets trouble: it answers 503, recovers, and stops.

Each case once left every later write, and the graceful shutdown, waiting forever, or
acknowledged pushes that were gone after a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.http_api import ApiClient
from tests.helpers.servers import RegdFactory, RegdServer

pytestmark = pytest.mark.e2e

WRITE_TIMEOUT = {"REGD_DATABASE_WRITE_TIMEOUT": "2"}
# Far above the write timeout: a request still unanswered by then waits without bound.
CLIENT_TIMEOUT = 30.0


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def start_upload(http: httpx.Client) -> httpx.Response:
    return http.post("/v2/a/blobs/uploads/")


def assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"].isdigit()
    assert answer.json()["errors"][0]["code"] == "TOOMANYREQUESTS"


@pytest.fixture
def sqlite_regd(regd_factory: RegdFactory) -> RegdServer:
    return regd_factory(database_url=None, env=WRITE_TIMEOUT)


def test_a_directory_in_place_of_the_lock_file(sqlite_regd: RegdServer) -> None:
    lock = sqlite_regd.data_dir / "regd.db.writelock"
    with httpx.Client(base_url=sqlite_regd.url, timeout=CLIENT_TIMEOUT) as http:
        assert start_upload(http).status_code == 202
        lock.unlink()
        lock.mkdir()
        assert_unavailable(start_upload(http))
        assert f"cannot open the lock file {lock}: Is a directory" in sqlite_regd.output()
        lock.rmdir()
        # The same process, without a restart.
        assert start_upload(http).status_code == 202
    assert sqlite_regd.stop() == 0


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def idle_connections(server: RegdServer, count: int) -> Iterator[None]:
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    try:
        yield
    finally:
        for s in sockets:
            s.close()


def test_descriptors_run_out_then_come_back(sqlite_regd: RegdServer) -> None:
    assert sqlite_regd.process is not None
    pid = sqlite_regd.process.pid
    with httpx.Client(base_url=sqlite_regd.url, timeout=CLIENT_TIMEOUT) as http:
        # The writer, its connection and this keep-alive connection are open already.
        assert start_upload(http).status_code == 202
        limit = open_descriptors(pid) + 8
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        try:
            with idle_connections(sqlite_regd, 30):
                wait_for(lambda: open_descriptors(pid) >= limit)
                assert_unavailable(start_upload(http))
                assert "Too many open files" in sqlite_regd.output()
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
                assert start_upload(http).status_code == 202
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert sqlite_regd.stop() == 0


@contextlib.contextmanager
def holding(lock: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_lock_held_by_another_process(sqlite_regd: RegdServer) -> None:
    lock = sqlite_regd.data_dir / "regd.db.writelock"
    with httpx.Client(base_url=sqlite_regd.url, timeout=CLIENT_TIMEOUT) as http:
        assert start_upload(http).status_code == 202
        with holding(lock):
            assert_unavailable(start_upload(http))
        assert f"waiting for the lock file {lock}, which another process holds" in (
            sqlite_regd.output()
        )
        assert start_upload(http).status_code == 202
        with holding(lock):
            assert_unavailable(start_upload(http))
            # The writer is still blocked on the lock: shutdown must not wait for it.
            assert sqlite_regd.stop() == 0


def test_database_file_removed_while_serving(sqlite_regd: RegdServer) -> None:
    database = sqlite_regd.data_dir / "regd.db"
    with ApiClient(sqlite_regd.url, timeout=CLIENT_TIMEOUT) as registry:
        _, body = registry.push_tiny_image("app", "v1", payload=b"layer one")
        database.unlink()
        acknowledged = []
        for tag in ("v2", "v3"):
            answer = registry.http.put(
                f"/v2/app/manifests/{tag}",
                content=body,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            )
            if answer.status_code == 201:
                acknowledged.append(tag)
            else:
                assert_unavailable(answer)
        assert acknowledged == []
        assert_unavailable(registry.http.post("/v2/app/blobs/uploads/"))
    gone = f"the database file {database} was removed while regd was running"
    # Each refused request is logged as a backend failure; the finding itself once.
    lines = sqlite_regd.output().splitlines()
    assert len([line for line in lines if gone in line and "logger=regd.metadata" in line]) == 1
    assert sqlite_regd.stop() == 0


def test_empty_database_beside_stored_blobs_is_reported(sqlite_regd: RegdServer) -> None:
    warning = "the database knows no blob but the storage"
    with ApiClient(sqlite_regd.url, timeout=CLIENT_TIMEOUT) as registry:
        registry.push_blob("app", b"some layer")
    assert warning not in sqlite_regd.output()
    sqlite_regd.stop()
    for leftover in sqlite_regd.data_dir.glob("regd.db*"):
        leftover.unlink()
    sqlite_regd.start()
    lines = [line for line in sqlite_regd.output().splitlines() if warning in line]
    assert len(lines) == 1, sqlite_regd.output()
    assert "level=WARNING" in lines[0]
    assert f"regctl import-registry2 {sqlite_regd.data_dir}" in lines[0]
    assert "regctl verify" in lines[0]
