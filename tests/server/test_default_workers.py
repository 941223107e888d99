"""`regd serve` with no worker setting runs one worker per usable CPU; `workers = 1` one."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from regd.config import default_workers, usable_cpus
from tests.helpers.http_api import ApiClient
from tests.helpers.servers import RegdFactory, RegdServer

pytestmark = pytest.mark.e2e

# Long enough for a loaded machine to start every worker; the loop ends as soon as they run.
SETTLE_S = 30.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces: the fields after it start past the last ')'.
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


def serving_processes(server: RegdServer) -> int:
    """How many processes serve: the worker children of a supervisor, or the main process
    itself when it serves alone (no worker child)."""
    assert server.process is not None
    workers = 0
    for child in _children(server.process.pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # multiprocessing's spawn start method runs each worker through spawn_main.
        workers += any(b"spawn_main" in arg for arg in argv)
    return workers or 1


def settled_count(server: RegdServer, expected: int) -> int:
    """The serving processes once `expected` of them run (or the deadline passes)."""
    deadline = time.monotonic() + SETTLE_S
    count = serving_processes(server)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        count = serving_processes(server)
    return count


def test_the_default_is_one_worker_per_usable_cpu(regd_factory: RegdFactory) -> None:
    expected = default_workers("filesystem", usable_cpus())
    server = regd_factory(workers=None, log_level="info")
    assert settled_count(server, expected) == expected, server.output()
    assert f"workers={expected} " in server.output()
    # Whichever worker a connection lands on, the registry is one.
    with ApiClient(server.url) as http:
        _, body = http.push_tiny_image("defaults/workers", "v1", payload=b"any worker")
    for _ in range(2 * expected):
        with ApiClient(server.url) as http:
            assert http.get_manifest("defaults/workers", "v1").content == body


def test_workers_1_in_the_file_is_one_process(regd_factory: RegdFactory, tmp_path: Path) -> None:
    config = tmp_path / "regd.toml"
    config.write_text("workers = 1\n")
    server = regd_factory(workers=None, log_level="info", extra_args=["--config", str(config)])
    assert settled_count(server, 1) == 1, server.output()
    assert "workers=1 " in server.output()


def test_memory_storage_defaults_to_one_worker(regd_factory: RegdFactory) -> None:
    # The memory driver's blobs live in one process: its default must not refuse to start.
    server = regd_factory(workers=None, log_level="info", env={"REGD_STORAGE": "memory"})
    assert settled_count(server, 1) == 1, server.output()
    assert "workers=1 " in server.output()


def listening_sockets(port: int) -> int:
    """How many IPv4 TCP sockets listen on `port` (/proc/net/tcp: state 0A is LISTEN)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    suffix = f":{port:04X}"
    return sum(1 for line in lines if line.split()[1].endswith(suffix) and line.split()[3] == "0A")


def test_each_worker_listens_on_a_socket_of_its_own(regd_factory: RegdFactory) -> None:
    # On one shared socket a burst of keep-alive clients could all land on one worker;
    # with a socket each (SO_REUSEPORT) the kernel spreads them over the workers.
    server = regd_factory(workers=3)
    assert listening_sockets(server.port) == 3
    sockets = []
    for _ in range(48):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: regd\r\n\r\n")
        sockets.append(sock)
    try:
        for sock in sockets:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert server.process is not None
        holders = {pid for pid in _children(server.process.pid) if _holds(pid, server.port)}
        assert len(holders) == 3, f"the connections are held by {sorted(holders)}"
    finally:
        for sock in sockets:
            sock.close()


def _holds(pid: int, port: int) -> bool:
    """Whether process `pid` holds an accepted connection on local port `port`."""
    suffix = f":{port:04X}"
    inodes = {
        line.split()[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(suffix) and line.split()[3] == "01"
    }
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
