"""SIGTERM with several workers: requests in flight finish, then every process exits."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RegdFactory
from tests.helpers.http_api import ApiClient

pytestmark = pytest.mark.e2e

CHUNK = 1024 * 1024
CHUNKS = 96
# The first chunks go at once; the rest are paced so the upload is still arriving well
# after the signal.
SIGNAL_AFTER = 8
PACE = 0.05


def chunk(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(4, "big")).digest() * (CHUNK // 32)


@pytest.mark.parametrize("target", ["main process", "process group"])
def test_sigterm_lets_uploads_in_flight_finish(regd_factory: RegdFactory, target: str) -> None:
    server = regd_factory(workers=2)
    assert server.process is not None
    digest = "sha256:" + hashlib.sha256(b"".join(chunk(i) for i in range(CHUNKS))).hexdigest()
    with ApiClient(server.url) as reg:
        location = reg.start_upload("graceful/app")
        # Both workers have started (the other one answers too).
        for _ in range(4):
            assert reg.http.get("/v2/").status_code == 200
    underway = threading.Event()
    result: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        for i in range(CHUNKS):
            if i == SIGNAL_AFTER:
                underway.set()
            if i > SIGNAL_AFTER:
                time.sleep(PACE)
            yield chunk(i)

    def push() -> None:
        try:
            r = httpx.put(location, params={"digest": digest}, content=body(), timeout=120)
            result["status"] = r.status_code
            result["text"] = r.text
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)

    pusher = threading.Thread(target=push)
    pusher.start()
    assert underway.wait(60)
    if target == "main process":
        server.process.send_signal(signal.SIGTERM)
    else:
        os.killpg(server.process.pid, signal.SIGTERM)
    pusher.join(120)
    assert result.get("status") == 201, result
    assert server.process.wait(60) == 0, server.output()
