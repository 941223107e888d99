"""/healthz and /readyz of real regd processes: ready on both databases; 503 naming the
database when PostgreSQL refuses connections or does not answer in time, naming the
storage when its volume turns read-only, and back to 200 when they recover; 503 as soon as
a graceful shutdown begins."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.helpers.pg import admin_url
from tests.helpers.servers import RegdFactory, RegdServer
from tests.helpers.volumes import tmpfs
from tests.observability.support import wait_for

pytestmark = pytest.mark.e2e


def _ready(server: RegdServer) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=30)


def _status_is(server: RegdServer, status: int) -> bool:
    return _ready(server).status_code == status


def test_healthy_and_ready(regd_factory: RegdFactory, database_url: str | None) -> None:
    server = regd_factory(database_url=database_url)
    health = httpx.get(f"{server.url}/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = _ready(server)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.fixture
def pg_admin() -> Iterator[psycopg.Connection]:
    with psycopg.connect(admin_url(), autocommit=True, connect_timeout=5) as conn:
        yield conn


def test_ready_follows_postgresql_refusing_connections(
    regd_factory: RegdFactory, fresh_pg_url: str, pg_admin: psycopg.Connection
) -> None:
    server = regd_factory(database_url=fresh_pg_url)
    assert _status_is(server, 200)
    name = _database_name(fresh_pg_url)
    # The server stays up for every other test's database: only this one stops taking
    # connections, and regd's open ones are cut.
    pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        pg_admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        wait_for(lambda: _status_is(server, 503), "/readyz answering 503", timeout=30)
        doc = _ready(server).json()
        assert doc["status"] == "unavailable"
        assert doc["checks"]["storage"] == "ok"
        assert "not currently accepting connections" in doc["checks"]["database"]
    finally:
        pg_admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    wait_for(lambda: _status_is(server, 200), "/readyz answering 200 again", timeout=30)


class _Locked:
    """The schema table locked by another session, so regd's readiness query waits."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, connect_timeout=5)
        self.conn.execute("LOCK TABLE regd_schema IN ACCESS EXCLUSIVE MODE")

    def waiting(self) -> bool:
        """Whether some session waits for that lock (regd's check has begun)."""
        row = self.conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'regd_schema' AND NOT l.granted"
        ).fetchone()
        return row is not None and row[0] > 0

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def test_ready_gives_up_on_a_database_that_does_not_answer(
    regd_factory: RegdFactory, fresh_pg_url: str
) -> None:
    server = regd_factory(database_url=fresh_pg_url, env={"REGD_READY_TIMEOUT": "1s"})
    lock = _Locked(fresh_pg_url)
    try:
        answer = _ready(server)
        assert answer.status_code == 503
        assert answer.json()["checks"] == {
            "database": "no answer within 1 s",
            "storage": "ok",
        }
        # The hanging check is not started again: the next probe reports the same.
        assert _ready(server).json()["checks"]["database"] == "no answer within 1 s"
    finally:
        lock.release()
    wait_for(lambda: _status_is(server, 200), "/readyz answering 200 again", timeout=30)


def test_ready_follows_a_volume_that_turns_read_only(
    regd_factory: RegdFactory, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "blobs", "8m") as volume:
        server = regd_factory(env={"REGD_STORAGE_ROOT": str(volume)})
        assert _status_is(server, 200)
        remount = ["mount", "-o", "remount,ro", str(volume)]
        subprocess.run(remount, check=True, capture_output=True)
        try:
            answer = _ready(server)
            assert answer.status_code == 503
            doc = answer.json()
            assert doc["checks"]["database"] == "ok"
            assert "read-only" in doc["checks"]["storage"].lower()
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(volume)], check=True)
        wait_for(lambda: _status_is(server, 200), "/readyz answering 200 again", timeout=30)
        server.stop()


def _read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and the body of one answer, read by its Content-Length (the connection
    itself may stay open until the drain ends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length: *(\d+)", head)
    assert found is not None, head
    length = int(found[1])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        body += chunk
    return head, body


def test_ready_turns_503_when_a_graceful_shutdown_begins(
    regd_factory: RegdFactory, fresh_pg_url: str
) -> None:
    # A long timeout: the probe below is still waiting on its check when the signal comes.
    server = regd_factory(
        database_url=fresh_pg_url,
        env={"REGD_READY_TIMEOUT": "5m", "REGD_GRACEFUL_TIMEOUT": "5s"},
    )
    lock = _Locked(fresh_pg_url)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nhost: regd\r\n\r\n")
            wait_for(lock.waiting, "the readiness check waiting for the database")
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            head, body = _read_answer(sock)
    finally:
        lock.release()
    assert head.startswith(b"HTTP/1.1 503"), head
    assert body == b'{"status":"draining","checks":{}}'
    wait_for(lambda: not server.running, "regd exiting after the drain", timeout=30)
