"""A small HTTP/1.1 keep-alive client on a raw socket.

Cheap enough per request that, at the request rates of these servers, the client
does not become the bottleneck; bodies can be streamed out of and into memoryviews.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

READ_BUFFER = 256 * 1024
SEND_SLICE = 4 * 1024 * 1024

Body = bytes | bytearray | memoryview
Sink = Callable[[bytes], None]


class HttpError(Exception):
    """The connection broke or the server answered something unparseable."""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def _no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


class Connection:
    """One persistent connection to host:port; reconnects when the server closes it."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 120.0,
        authorize: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        """`authorize(target)` gives the headers that authenticate a request to `target`."""
        self.host = host
        self.port = port
        self.timeout = timeout
        self.authorize = authorize
        self._sock: socket.socket | None = None
        self._reader: io.BufferedReader | None = None
        self.host_header = f"{host}:{port}"

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = io.BufferedReader(socket.SocketIO(sock, "rb"), READ_BUFFER)
        return sock

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
        *,
        chunks: Iterable[Body] | None = None,
        length: int | None = None,
        sink: Sink | None = None,
    ) -> Response:
        """Send one request and read its answer.

        `body` is sent whole; `chunks` (with `length`) is streamed piece by piece. A
        `sink` receives the response body in pieces instead of it being kept.
        """
        if self.authorize is not None:
            headers = {**(headers or {}), **self.authorize(target)}
        reused = self._sock is not None
        try:
            return self._exchange(method, target, headers, body, chunks, length, sink)
        except (ConnectionError, HttpError, TimeoutError, OSError):
            self.close()
            # A kept-alive connection may have been closed by the server meanwhile:
            # retry once on a fresh one when the body can be sent again.
            if not reused or chunks is not None:
                raise
            return self._exchange(method, target, headers, body, None, length, sink)

    def _exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None,
        body: Body | None,
        chunks: Iterable[Body] | None,
        length: int | None,
        sink: Sink | None,
    ) -> Response:
        sock = self._sock or self._connect()
        if chunks is None:
            length = len(body) if body is not None else None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        if headers:
            lines.extend(f"{k}: {v}" for k, v in headers.items())
        if length is not None:
            lines.append(f"Content-Length: {length}")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body is not None and len(body) <= 64 * 1024:
            sock.sendall(head + bytes(body))
        else:
            sock.sendall(head)
            if body is not None:
                view = memoryview(body)
                for start in range(0, len(view), SEND_SLICE):
                    sock.sendall(view[start : start + SEND_SLICE])
            elif chunks is not None:
                for piece in chunks:
                    sock.sendall(piece)
        return self._read_response(method, sink)

    def _read_response(self, method: str, sink: Sink | None) -> Response:
        reader = self._reader
        assert reader is not None
        readline = reader.readline
        status_line: bytes = readline(65537)
        if not status_line:
            raise HttpError("connection closed before a response")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise HttpError(f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line: bytes = readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body = b""
        if not _no_body(method, status):
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = self._read_chunked(sink)
            elif "content-length" in headers:
                body = self._read_exact(int(headers["content-length"]), sink)
            else:
                body = self._read_to_end(sink)
                headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)

    def _read_exact(self, size: int, sink: Sink | None) -> bytes:
        assert self._reader is not None
        read = self._reader.read
        if sink is None:
            data: bytes = read(size)
            if len(data) != size:
                raise HttpError("connection closed inside a body")
            return data
        left = size
        while left:
            piece: bytes = read(min(left, SEND_SLICE))
            if not piece:
                raise HttpError("connection closed inside a body")
            sink(piece)
            left -= len(piece)
        return b""

    def _read_chunked(self, sink: Sink | None) -> bytes:
        assert self._reader is not None
        readline = self._reader.readline
        pieces: list[bytes] = []
        while True:
            size = int(readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                while readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            data = self._read_exact(size, sink)
            if sink is None:
                pieces.append(data)
            readline(8)
        return b"".join(pieces)

    def _read_to_end(self, sink: Sink | None) -> bytes:
        assert self._reader is not None
        data = self._reader.read()
        if sink is not None:
            sink(data)
            return b""
        return data
