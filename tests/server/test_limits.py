"""Limits a client without credentials can run into, against a real regd process.

Thousands of slow clients, heads and bodies that never finish, and more connections than
the caps allow: a well-behaved client must keep working, every refusal must be a clear
status, and the memory the slow clients cost must come back once they leave.
"""

from __future__ import annotations

import contextlib
import hashlib
import resource
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import trio
import trio.testing

from regd.connections import LATE_TRIM_DELAY, TRIM_AFTER_PEAK, Limits
from tests.conftest import RegdFactory
from tests.helpers.http_api import ApiClient
from tests.server.slow_clients import (
    SlowClients,
    connect,
    open_file_limit,
    open_sockets,
    raise_own_open_file_limit,
    rss_kib,
    upload_sessions,
    wait_until,
)
from tests.server.test_tls import Pki, pki, tls_env

__all__ = ["pki"]  # the fixture, shared with the TLS tests

pytestmark = pytest.mark.e2e

SLOW_BODIES = 1500
# What regd logs once it has handed back the memory a burst of connections freed.
BURST_RELEASED = "freed memory returned to the system"
SLOW_HEADS = 500


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def good_client_round(url: str, n: int) -> None:
    with ApiClient(url) as good:
        payload = hashlib.sha256(str(n).encode()).digest() * 1000
        digest, _ = good.push_tiny_image("good/app", f"v{n}", payload=payload)
        manifest = good.get_manifest("good/app", f"v{n}").json()
        assert good.get_blob("good/app", manifest["layers"][0]["digest"]) == payload
        assert good.get_manifest("good/app", digest).status_code == 200


def test_slow_clients_leave_room_and_memory(regd_factory: RegdFactory) -> None:
    raise_own_open_file_limit(3 * (SLOW_BODIES + SLOW_HEADS))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 3 * (SLOW_BODIES + SLOW_HEADS):
        pytest.skip(f"the hard open-file limit ({hard}) is too low for this test")
    # Started with the common default soft limit; regd must raise it to the hard one.
    with open_file_limit(1024):
        server = regd_factory(
            log_level="info", extra_args=["--header-timeout", "10m", "--body-timeout", "10m"]
        )
    assert server.process is not None
    pid = server.process.pid
    assert f"open_files={hard}" in server.output()

    cold = rss_kib(pid)
    warm_up(server.url, SLOW_BODIES)
    baseline = settled_rss(pid)
    held, peak = slow_wave(server.url, pid, 1)
    wait_until(lambda: BURST_RELEASED in server.output(), 60, "the release after the burst")
    final = settled_rss(pid)
    per_client_kib = (peak - baseline) / (SLOW_BODIES + SLOW_HEADS)
    print(
        f"\nslow clients: held={held} rss_kib cold={cold} baseline={baseline} peak={peak} "
        f"final={final} per_client_kib={per_client_kib:.1f}"
    )
    # The criterion: memory returns to within a fifth of its level before.
    assert final <= baseline * 1.2
    # Each slow client pinned a 1 MiB read buffer before reads started at 64 KiB.
    assert per_client_kib < 64


def warm_up(url: str, sessions: int) -> None:
    """What a server that has been serving for a while has done: pushes and pulls by
    several clients at once (its thread and connection pools at their working size), and
    as many upload sessions as the slow clients will use, so the database, and SQLite's
    page caches over it, are already as large as they will be. The memory measured after
    this is the baseline; the slow clients must leave nothing beyond it."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: good_client_round(url, 1000 + n), range(48)))
    upload_sessions(url, "warm/clients", sessions)


def slow_wave(url: str, pid: int, n: int) -> tuple[int, int]:
    """Hold every slow client while a good client pushes and pulls; return the number of
    connections the server held and its peak RSS."""
    slow = SlowClients(url)
    try:
        slow.open(SLOW_BODIES, SLOW_HEADS)
        assert slow.trickle() == SLOW_BODIES + SLOW_HEADS
        wait_until(
            lambda: open_sockets(pid) >= SLOW_BODIES + SLOW_HEADS,
            60,
            "the server holding every slow client",
        )
        held = open_sockets(pid)
        good_client_round(url, 10 * n + 1)
        assert slow.trickle() == SLOW_BODIES + SLOW_HEADS
        good_client_round(url, 10 * n + 2)
        peak = rss_kib(pid)
    finally:
        slow.close()
    wait_until(lambda: open_sockets(pid) < 20, 60, "the slow connections closing")
    good_client_round(url, 10 * n + 3)
    return held, peak


def settled_rss(pid: int) -> int:
    """RSS once it stops falling (freed memory goes back over a few seconds)."""
    last = rss_kib(pid)
    while True:
        time.sleep(1)
        now = rss_kib(pid)
        if now >= last * 0.99:
            return now
        last = now


def test_slow_head_and_body_are_answered_408(regd_factory: RegdFactory) -> None:
    server = regd_factory(extra_args=["--header-timeout", "1s", "--body-timeout", "1s"])
    with ApiClient(server.url) as good:
        url = httpx.URL(good.start_upload("timeout/app"))
        location = url.raw_path.decode()
    with connect("127.0.0.1", server.port, "127.0.0.2") as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Half: ")
        reply = answer(sock)
    assert status(reply) == 408, reply
    with connect("127.0.0.1", server.port, "127.0.0.2") as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode()
            + b"0123456789"
        )
        reply = answer(sock)
    assert status(reply) == 408, reply
    # The session saw none of the cut-off body, and keeps working.
    good_client_round(server.url, 0)


def held_connection(port: int, source: str) -> socket.socket:
    """A keep-alive connection the server has certainly accepted: it answered on it."""
    sock = connect("127.0.0.1", port, source)
    sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"{}"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert status(data) == 200, data
    return sock


def test_connection_caps_answer_429_and_503(regd_factory: RegdFactory) -> None:
    server = regd_factory(
        extra_args=["--max-connections", "12", "--max-connections-per-client", "4"]
    )
    held: list[socket.socket] = []
    try:
        held += [held_connection(server.port, "127.0.0.2") for _ in range(4)]
        with connect("127.0.0.1", server.port, "127.0.0.2") as extra:
            extra.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = answer(extra)
        assert status(reply) == 429, reply
        assert b"Retry-After: " in reply
        assert b"TOOMANYREQUESTS" in reply
        held += [held_connection(server.port, f"127.0.0.{3 + n % 2}") for n in range(8)]
        with connect("127.0.0.1", server.port, "127.0.0.1") as extra:
            extra.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = answer(extra)
        assert status(reply) == 503, reply
        assert b"Retry-After: " in reply
    finally:
        for sock in held:
            sock.close()

    def admitted() -> bool:
        return httpx.get(f"{server.url}/v2/").status_code == 200

    wait_until(admitted, 30, "room again once the held connections closed")
    good_client_round(server.url, 0)


def test_caps_and_head_timeout_hold_on_a_tls_port(regd_factory: RegdFactory, pki: Pki) -> None:
    """One connection class serves both ports: over TLS a refusal is readable and a client
    that never finishes its handshake is dropped within the head's deadline."""
    server = regd_factory(
        env=tls_env(pki),
        tls_verify=pki.client_context(),
        extra_args=["--max-connections-per-client", "1", "--header-timeout", "1s"],
    )
    context = pki.client_context()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as held,
    ):
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw2,
            context.wrap_socket(raw2, server_hostname="127.0.0.1") as refused,
        ):
            refused.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = tls_answer(refused)
            assert status(reply) == 429, reply
            assert b"TOOMANYREQUESTS" in reply
        # The first connection sent no request head in time.
        assert status(tls_answer(held)) == 408
    # A TCP connection that never starts the handshake is closed by the server too.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
        assert silent.recv(1) == b""


def tls_answer(conn: ssl.SSLSocket) -> bytes:
    """Everything the server sends over TLS until it closes the connection."""
    data = b""
    with contextlib.suppress(ssl.SSLError, OSError):
        while chunk := conn.recv(65536):
            data += chunk
    return data


def recording_limits() -> tuple[Limits, list[int]]:
    """Limits whose memory releases are recorded (the connections open at each)."""
    released: list[int] = []
    limits = Limits(
        max_connections=1000,
        max_connections_per_client=0,
        header_timeout=10,
        body_timeout=10,
        trim=lambda: released.append(limits.open),
    )
    return limits, released


def test_memory_is_released_when_a_burst_of_connections_is_over() -> None:
    limits, released = recording_limits()
    for _ in range(TRIM_AFTER_PEAK - 1):
        limits.admit("a")
    for _ in range(TRIM_AFTER_PEAK - 1):
        limits.release("a")
    assert released == []  # a small peak is not worth a full collection

    for _ in range(400):
        limits.admit("a")
    for _ in range(400):
        limits.release("a")
    assert released == [100, 25]


def test_a_client_that_stops_reading_an_answer_is_dropped(regd_factory: RegdFactory) -> None:
    server = regd_factory(log_level="info", env={"REGD_SEND_TIMEOUT": "1s"})
    assert server.process is not None
    pid = server.process.pid
    # More than the kernel buffers on both ends can hold, so the server's writes stall.
    blob = hashlib.sha256(b"stall").digest() * (16 * 1024 * 1024 // 32)
    idle = open_sockets(pid)
    with ApiClient(server.url) as good:
        digest = good.push_blob("stall/app", blob)
    wait_until(lambda: open_sockets(pid) <= idle, 30, "the push's connection closing")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window: the client takes almost nothing and then nothing at all.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"GET /v2/stall/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(
            lambda: "stopped reading the answer" in server.output(),
            60,
            "the server giving up on the stalled reader",
        )
        wait_until(lambda: open_sockets(pid) <= idle, 30, "the server closing its connection")
        # The server reset the connection: the client learns it once it reads again.
        with contextlib.suppress(ConnectionResetError):
            sock.settimeout(30)
            while sock.recv(1024 * 1024):
                pass
    good_client_round(server.url, 0)


def test_a_body_slower_than_the_minimum_rate_is_answered_408(regd_factory: RegdFactory) -> None:
    server = regd_factory(env={"REGD_MIN_BODY_RATE": "1000"}, extra_args=["--body-timeout", "3s"])
    with ApiClient(server.url) as good:
        location = httpx.URL(good.start_upload("trickle/app")).raw_path.decode()
    reply = b""
    with connect("127.0.0.1", server.port, "127.0.0.2", timeout=0.5) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
        )
        # One byte whenever half a second passes without an answer: never a pause as long
        # as body_timeout, but far below 1000 bytes/s.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                with contextlib.suppress(OSError):
                    sock.send(b"x")
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
    assert reply, "the trickling body was never answered"
    assert status(reply) == 408, reply
    assert b"minimum rate" in reply, reply
    good_client_round(server.url, 0)


def test_memory_is_released_again_once_the_burst_threads_are_gone() -> None:
    limits, released = recording_limits()

    async def burst() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(limits.release_after_bursts)
            for _ in range(400):
                limits.admit("a")
            for _ in range(400):
                limits.release("a")
            assert released == [100, 25]
            await trio.sleep(LATE_TRIM_DELAY - 1)
            assert released == [100, 25]
            await trio.sleep(2)
            assert released == [100, 25, 0]
            await trio.sleep(10 * LATE_TRIM_DELAY)
            assert released == [100, 25, 0]  # once per burst
            nursery.cancel_scope.cancel()

    trio.run(burst, clock=trio.testing.MockClock(autojump_threshold=0))
