"""How answers leave a real regd process: small ones in one write, blobs by sendfile.

A small answer's head waits for its body so both leave in one write. On a plain-TCP port
a stored blob's bytes go from the page cache to the socket without passing through
Python; h11 still accounts for them. Whole and ranged bodies must arrive exact, the
connection must stay usable for the next request, and a file that turns out shorter than
its recorded size must break that one transfer (a body short of its length) without
hanging or harming the server.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h11
import pytest

from tests.conftest import RegdFactory
from tests.helpers.http_api import ApiClient
from tests.server.slow_clients import wait_until
from tests.server.test_limits import good_client_round

pytestmark = pytest.mark.e2e

BLOB_SIZE = 12 * 1024 * 1024 + 12345


def blob_file(data_dir: Path, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return data_dir / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


def exchange(
    sock: socket.socket, client: h11.Connection, method: str, target: str, **headers: str
) -> tuple[h11.Response, bytes]:
    """One request on the connection and its whole answer."""
    head = [("host", "regd"), *headers.items()]
    sock.sendall(client.send(h11.Request(method=method, target=target, headers=head)) or b"")
    sock.sendall(client.send(h11.EndOfMessage()) or b"")
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(sock.recv(1024 * 1024))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            client.start_next_cycle()
            return response, bytes(body)
        else:
            raise AssertionError(f"unexpected {event!r}")


@contextmanager
def traced_calls(pid: int, log: Path, syscalls: str) -> Iterator[list[str]]:
    """The calls to `syscalls` (comma-separated names) the process tree of `pid` makes
    inside the block (strace)."""
    strace = shutil.which("strace")
    assert strace is not None, "strace is installed by scripts/setup for this test"
    pids = [
        str(pid),
        *subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split(),
    ]
    argv = [strace, "-f", "-qq", "-e", f"trace={syscalls}", "-o", str(log)]
    for p in pids:
        argv += ["-p", p]
    tracer = subprocess.Popen(argv, stderr=subprocess.PIPE)
    calls: list[str] = []
    try:
        # strace prints nothing once attached; give it a moment to stop every thread.
        time.sleep(1.0)
        yield calls
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        names = syscalls.split(",")
        calls += [
            line
            for line in log.read_text().splitlines()
            if any(f"{name}(" in line for name in names)
        ]


# A write to a descriptor, by send or by write: its descriptor.
_WRITE = re.compile(r"\b(?:sendto|write)\((\d+),")


def written_fds(calls: list[str]) -> list[str]:
    """The descriptor of each traced write."""
    return [m[1] for c in calls if (m := _WRITE.search(c)) is not None]


def answer_fd(calls: list[str]) -> str:
    """The descriptor most of the traced writes went to."""
    fds = written_fds(calls)
    assert fds, "no write traced"
    return max(set(fds), key=fds.count)


def test_blob_bodies_go_by_sendfile_on_one_connection(
    regd_factory: RegdFactory, tmp_path: Path
) -> None:
    server = regd_factory()
    assert server.process is not None
    blob = os.urandom(BLOB_SIZE)
    with ApiClient(server.url) as api:
        digest = api.push_blob("send/file", blob)
    target = f"/v2/send/file/blobs/{digest}"
    sock = socket.create_connection(("127.0.0.1", server.port))
    client = h11.Connection(h11.CLIENT)
    with sock, traced_calls(server.process.pid, tmp_path / "strace.log", "sendfile") as calls:
        response, body = exchange(sock, client, "GET", target)
        assert response.status_code == 200
        assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]
        # A range from the middle, then the whole again: the same connection each time,
        # so every body ended exactly at its length.
        first, last = 1_000_003, 9_999_999
        response, body = exchange(sock, client, "GET", target, range=f"bytes={first}-{last}")
        assert response.status_code == 206
        assert body == blob[first : last + 1]
        response, body = exchange(sock, client, "HEAD", target)
        assert response.status_code == 200
        assert body == b""
        response, body = exchange(sock, client, "GET", target, range=f"bytes={BLOB_SIZE - 7}-")
        assert body == blob[-7:]
        response, body = exchange(sock, client, "GET", target)
        assert body == blob
    assert calls, "the blob bodies were not sent with sendfile"


def test_a_file_shorter_than_its_blob_breaks_that_transfer_only(
    regd_factory: RegdFactory,
) -> None:
    server = regd_factory(log_level="info")
    blob = os.urandom(4 * 1024 * 1024)
    with ApiClient(server.url) as api:
        digest = api.push_blob("cut/short", blob)
    # Damage underneath regd (a failing disk, an operator's mistake): the rows still say
    # 4 MiB, the file holds 1 MiB.
    path = blob_file(server.data_dir, digest)
    os.truncate(path, 1024 * 1024)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(60)
    client = h11.Connection(h11.CLIENT)
    with sock, pytest.raises((h11.RemoteProtocolError, ConnectionResetError)):
        exchange(sock, client, "GET", f"/v2/cut/short/blobs/{digest}")
    wait_until(lambda: "ended" in server.output(), 30, "the server reporting the short file")
    good_client_round(server.url, 0)


def test_a_small_answer_leaves_in_one_write(regd_factory: RegdFactory, tmp_path: Path) -> None:
    server = regd_factory()
    assert server.process is not None
    with ApiClient(server.url) as api:
        digest, _ = api.push_tiny_image("one/write", "v1", payload=b"x" * 1000)
    sock = socket.create_connection(("127.0.0.1", server.port))
    client = h11.Connection(h11.CLIENT)
    accept = "application/vnd.oci.image.manifest.v1+json"
    rounds = 20
    traced = traced_calls(server.process.pid, tmp_path / "strace.log", "sendto,write")
    with sock, traced as calls:
        for _ in range(rounds):
            response, body = exchange(
                sock, client, "GET", "/v2/one/write/manifests/v1", accept=accept
            )
            assert response.status_code == 200
            assert body
            response, body = exchange(sock, client, "HEAD", f"/v2/one/write/manifests/{digest}")
            assert response.status_code == 200
    # Other threads may write too (the database's, a wake-up pipe), but never to this
    # socket: the writes to it are the answers' own.
    fd = answer_fd(calls)
    assert written_fds(calls).count(fd) == 2 * rounds
