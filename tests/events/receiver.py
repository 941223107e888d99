"""A webhook receiver for the tests: a real HTTP server in a thread that records every
delivery, and that can be taken down (connections refused) and brought back on its port."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers.servers import free_port


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    # The sender's address and port: one per connection.
    peer: tuple[str, int] = ("", 0)

    @property
    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.body)["events"]
        return events

    def signed_by(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-regd-signature", ""), expected)


class Receiver:
    def __init__(self, *, keep_alive: bool = False) -> None:
        # HTTP/1.0 (the default) closes each connection after its answer, so that a
        # receiver taken down is down at once; HTTP/1.1 keeps it for the next delivery.
        self.keep_alive = keep_alive
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.deliveries.append(
                        Delivery(self.path, headers, body, self.client_address[:2])
                    )
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every event received (at `path`), in the order they arrived."""
        with self._lock:
            deliveries = list(self.deliveries)
        return [e for d in deliveries if path is None or d.path == path for e in d.events]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events(path)) < count:
            if time.monotonic() > deadline:
                got = [(e["action"], e["target"]) for e in self.events(path)]
                raise AssertionError(f"{count} events expected at {path}, got {len(got)}: {got}")
            time.sleep(0.05)
