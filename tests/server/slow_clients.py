"""Slow clients over raw sockets: request bodies and heads that trickle in, and the
server-side figures (descriptors, resident memory) to judge what they cost."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

# Loopback sources, so the per-address cap sees several clients; 127.0.0.1 stays free
# for the well-behaved client.
SOURCES = [f"127.0.0.{n}" for n in range(2, 30)]


@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """Run the block (and the processes it starts) with this soft descriptor limit."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def raise_own_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (the workers)."""
    total = 0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


def open_sockets(pid: int) -> int:
    count = 0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(FileNotFoundError):
            for fd in Path(f"/proc/{p}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink().name.startswith("socket:"):
                        count += 1
    return count


def connect(host: str, port: int, source: str, timeout: float = 30.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect((host, port))
    return sock


REPOSITORIES = 16


def upload_sessions(base_url: str, repo: str, count: int) -> list[str]:
    """Open `count` upload sessions; returns their locations."""
    with httpx.Client(base_url=base_url, timeout=60) as http:
        locations = []
        for i in range(count):
            # Spread over repositories: one may hold max_uploads_per_repository open
            # sessions, and every wave's sessions stay open.
            r = http.post(f"/v2/{repo}-{i % REPOSITORIES}/blobs/uploads/")
            assert r.status_code == 202, r.text
            locations.append(r.headers["Location"])
    return locations


class SlowClients:
    """`bodies` PATCHes whose bodies trickle in and `heads` requests whose heads do."""

    def __init__(self, base_url: str, repo: str = "slow/clients") -> None:
        self.base_url = base_url
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.repo = repo
        self.sockets: list[socket.socket] = []

    def open(self, bodies: int, heads: int) -> None:
        locations = upload_sessions(self.base_url, self.repo, bodies)
        for i in range(bodies + heads):
            sock = connect(self.host, self.port, SOURCES[i % len(SOURCES)])
            if i < bodies:
                sock.sendall(
                    f"PATCH {locations[i]} HTTP/1.1\r\nHost: x\r\n"
                    "Content-Type: application/octet-stream\r\n"
                    "Content-Length: 1000000\r\n\r\n".encode()
                )
            else:
                sock.sendall(f"PATCH /v2/{self.repo}/blobs/uploads/x HTTP/1.1\r\n".encode())
            self.sockets.append(sock)

    def trickle(self) -> int:
        """One byte more on every connection; returns how many connections are still open."""
        alive = []
        for sock in self.sockets:
            try:
                sock.send(b"x")
            except OSError:
                sock.close()
                continue
            alive.append(sock)
        self.sockets = alive
        return len(alive)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets = []


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s")
