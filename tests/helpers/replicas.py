"""Several `regd serve` processes over one database and one storage, and clients that spread
their requests over them the way a load balancer without sticky sessions would.

- `Replicas`: N processes, each on its own port and data directory, sharing the database
  URL and the storage (`SharedStorage` says how: a filesystem root, or a bucket).
- `RoundRobin`: an httpx transport sending each request to the next live replica.
- `Balancer`: a small HTTP/1.1 reverse proxy on a free port that does the same for tools
  that speak to one address (regctl, skopeo); each request, not each connection, goes to the
  next replica, so keep-alive connections do not pin a client to one process.
- `TcpRelay`: a TCP forwarder in front of a storage endpoint, to make it unreachable for a
  while and reachable again.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import httpx

from tests.helpers.http_api import ApiClient
from tests.helpers.servers import RegdServer, free_port

REPLICAS = 3


class SharedStorage(Protocol):
    """Where every replica keeps its blobs, as the settings that say so."""

    @property
    def name(self) -> str: ...

    def env(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class FilesystemStorage:
    """One directory all replicas write to (a shared mount, in a real deployment)."""

    root: Path
    name: str = "filesystem"

    def env(self) -> Mapping[str, str]:
        return {"REGD_STORAGE": "filesystem", "REGD_STORAGE_ROOT": str(self.root)}


@dataclass(frozen=True)
class EnvStorage:
    """Any other storage, given as the REGD_* settings that select it (e.g. a bucket);
    `relay`, when there is one, stands between the replicas and the storage's endpoint."""

    name: str
    settings: Mapping[str, str] = field(default_factory=dict)
    relay: TcpRelay | None = None

    def env(self) -> Mapping[str, str]:
        return dict(self.settings)


class Replicas:
    """`count` regd processes, started together, stopped together."""

    def __init__(
        self,
        scratch: Path,
        *,
        database_url: str | None,
        storage: SharedStorage,
        count: int = REPLICAS,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.storage = storage
        self.database_url = database_url
        self.servers = [
            RegdServer(
                data_dir=scratch / f"replica-{i}" / "data",
                database_url=database_url,
                scratch=scratch / f"replica-{i}",
                env={**storage.env(), **(env or {})},
                extra_args=extra_args,
            )
            for i in range(count)
        ]

    def start(self) -> None:
        """Start every replica at once (each start waits until it answers)."""
        with ThreadPoolExecutor(len(self.servers)) as pool:
            starts = [pool.submit(server.start) for server in self.servers]
        failures = [exc for f in starts if (exc := f.exception()) is not None]
        if failures:
            self.stop()
            raise failures[0]

    def stop(self) -> None:
        # Every replica drains its connections at the same time, not one after another.
        for server in self.live():
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Replicas:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, index: int) -> RegdServer:
        return self.servers[index]

    def __len__(self) -> int:
        return len(self.servers)

    def live(self) -> list[RegdServer]:
        return [server for server in self.servers if server.running]

    def logs(self) -> str:
        return "\n".join(f"--- {s.host} ---\n{s.output()}" for s in self.servers)


class RoundRobin(httpx.BaseTransport):
    """Sends each request to the next replica that is running; the `Host` header the client
    chose is kept, as a load balancer keeps it."""

    def __init__(self, replicas: Replicas) -> None:
        self._replicas = replicas
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._transport = httpx.HTTPTransport()
        # Who answered each request, in order: tests check the spreading really happened.
        self.history: list[str] = []

    def next_server(self) -> RegdServer:
        with self._lock:
            live = self._replicas.live()
            if not live:
                raise httpx.ConnectError("no replica is running")
            server = live[next(self._turn) % len(live)]
            self.history.append(server.host)
            return server

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        server = self.next_server()
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=server.port)
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()


class RoundRobinApi(ApiClient):
    """The tests' raw-HTTP client, each request on the next replica."""

    def __init__(self, replicas: Replicas, *, timeout: float = 60.0) -> None:
        super().__init__(replicas[0].url, timeout=timeout)
        self.http.close()
        self.transport = RoundRobin(replicas)
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=self.transport)


# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business, never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    }
)
_PIECE = 1 << 20


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> Iterator[bytes] | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        if length == 0:
            return None
        return self._sized_body(length)

    def _sized_body(self, length: int) -> Iterator[bytes]:
        left = length
        while left:
            piece = self.rfile.read(min(left, _PIECE))
            if not piece:
                raise ConnectionError("client closed the connection mid-body")
            left -= len(piece)
            yield piece

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                # Trailers (if any) end with an empty line.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield from self._sized_body(size)
            self.rfile.readline()

    def _forward(self) -> None:
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        body = self._body()
        if body is not None and "Content-Length" not in self.headers:
            # Re-framed as chunked by httpx; the length was unknown to the client too.
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        request = self.server.client.build_request(
            self.command, f"http://replicas{self.path}", headers=headers, content=body
        )
        try:
            answer = self.server.client.send(request, stream=True)
        except httpx.TransportError as exc:
            # Whatever body was left unread makes the connection unusable.
            self.close_connection = True
            self._reply_error(502, f"replica unreachable: {exc}")
            return
        try:
            self.send_response(answer.status_code)
            for key, value in answer.headers.multi_items():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            sized = "content-length" in answer.headers
            no_body = self.command == "HEAD" or answer.status_code in (204, 304)
            if not sized and not no_body:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if no_body:
                return
            for piece in answer.iter_raw(_PIECE):
                if sized:
                    self.wfile.write(piece)
                elif piece:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            if not sized:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            answer.close()

    def _reply_error(self, status: int, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    client: httpx.Client


class Balancer:
    """A reverse proxy on 127.0.0.1 spreading requests over `replicas`, one at a time each."""

    def __init__(self, replicas: Replicas) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.transport = RoundRobin(replicas)
        self._server = _ProxyServer(("127.0.0.1", self.port), _ProxyHandler)
        # Upload bodies may pause while a session's lease changes hands after a crash.
        self._server.client = httpx.Client(transport=self.transport, timeout=120.0)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Balancer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self._server.client.close()


class TcpRelay:
    """Forwards connections from a free port of 127.0.0.1 to `target` (host, port), and
    can play an unreachable endpoint: `cut()` drops every open connection and refuses new
    ones, `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> TcpRelay:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        for thread in self._threads:
            thread.join(timeout=10)

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        with self._lock:
            self._listener = listener
        self._spawn(self._accept, listener)

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            doomed, self._open = self._open, set()
        if listener is not None:
            # Closing alone would not wake the thread blocked in accept().
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in doomed:
            _drop(sock)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _drop(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _drop(client)
                    _drop(upstream)
                    return
                self._open |= {client, upstream}
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
