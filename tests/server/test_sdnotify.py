"""regd tells a service manager (systemd `Type=notify`) when it serves and when it stops."""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from regd import sdnotify
from tests.helpers.servers import RegdFactory

WAIT = 30.0


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's; a short directory, because a unix
    socket path is limited to about a hundred bytes."""
    directory = Path(tempfile.mkdtemp(prefix="regd-notify-"))
    path = str(directory / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(WAIT)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def messages(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_ready_when_serving_and_stopping_on_sigterm(
    regd_factory: RegdFactory, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    server = regd_factory(env={"NOTIFY_SOCKET": path})
    # regd_factory returns once /v2/ answers, so the news must already be waiting.
    ready = messages(sock.recv(4096))
    assert ready["READY"] == "1"
    assert server.host in ready["STATUS"]
    assert server.stop() == 0
    assert messages(sock.recv(4096))["STOPPING"] == "1"


def test_abstract_socket_address() -> None:
    name = f"regd-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(WAIT)
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": f"@{name}"})
        assert sock.recv(64) == b"READY=1"


def test_no_socket_no_notification(caplog: pytest.LogCaptureFixture) -> None:
    assert not sdnotify.notify("READY=1", {})
    # A socket nobody listens on is one warning, never a failure of regd.
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/regd-notify"})
    assert "cannot notify the service manager at /nonexistent/regd-notify" in caplog.text
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "relative"})
