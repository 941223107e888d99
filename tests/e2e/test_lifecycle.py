"""Starting, stopping and restarting regd keeps the registry's content."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers.http_api import ApiClient
from tests.helpers.servers import RegdFactory, RegdServer

pytestmark = pytest.mark.e2e


def test_sigterm_stops_cleanly_and_restart_keeps_content(regd_server: RegdServer) -> None:
    with ApiClient(regd_server.url) as http:
        digest, body = http.push_tiny_image("e2e/kept", "v1", payload=b"layer bytes")

    assert regd_server.stop() == 0, regd_server.output()
    regd_server.start()

    with ApiClient(regd_server.url) as http:
        assert http.get_manifest("e2e/kept", "v1").content == body
        assert http.get_manifest("e2e/kept", digest).content == body
        assert http.get_blob("e2e/kept", http.push_blob("e2e/kept", b"layer bytes")) == (
            b"layer bytes"
        )
        assert http.tags("e2e/kept") == ["v1"]


@pytest.mark.parametrize("workers", [2])
def test_workers_serve_and_stop_together(
    regd_factory: RegdFactory, database_url: str | None, workers: int
) -> None:
    server = regd_factory(database_url=database_url, workers=workers)
    with ApiClient(server.url) as http:
        _, body = http.push_tiny_image("e2e/workers", "v1", payload=b"from a worker")
    # Each new connection may land on another worker: all must see the same registry.
    for _ in range(6):
        with ApiClient(server.url) as http:
            assert http.get_manifest("e2e/workers", "v1").content == body

    assert server.process is not None
    group = server.process.pid
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=15) == 0, server.output()
    # No worker may outlive the main process (the fixture's SIGKILL sweep comes later).
    assert wait_until_gone(group), f"workers of process group {group} are still running"


def wait_until_gone(group: int, attempts: int = 100) -> bool:
    for _ in range(attempts):
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
