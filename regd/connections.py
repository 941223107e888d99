"""Every connection under hypercorn's trio worker: limits, timeouts and TLS.

hypercorn bounds neither the number of connections nor the time a client may take to send
its request head or body, and puts nothing about TLS into the ASGI scope. regd adds all of
it at the one place every connection passes through: the per-connection server object that
`hypercorn.trio.run.worker_serve` creates for each accepted stream. `install()` swaps in
one subclass that

- admits a connection only under the overall and the per-address caps, and otherwise
  answers `503` (server full) or `429` (one address holds too many) with Retry-After and
  closes; answering costs one short write, while leaving connections unaccepted would let
  them queue in the kernel's backlog, good clients with them, until each times out
  without learning why;
- gives the request head `header_timeout` from the connection's start (or from the first
  byte of a later request) and the request body `body_timeout` between two reads, then
  answers `408` and closes;
- on a TLS port, completes the handshake within the head's deadline and records the
  verified client certificate's common name in the connection's scope state
  (regd/tls.py);
- reads 64 KiB at a time and switches to 1 MiB reads only while a client keeps them
  full, so a slow client pins a small buffer and a fast blob push still gets few, large
  reads;
- hands memory freed by a burst of connections back to the operating system once the
  burst is over.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import logging
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import ConnectionState

from regd import tls

log = logging.getLogger("regd.server")

SMALL_READ = 64 * 1024
LARGE_READ = 1024 * 1024
# Descriptors kept free for what serving a connection opens besides its socket: blob
# files, database connections, worker threads' pipes.
RESERVED_DESCRIPTORS = 64
# How long a refusal may take to reach a client before the connection is dropped anyway.
REFUSAL_TIMEOUT = 5.0
RETRY_AFTER_SECONDS = 1
# When the open connections fall to a quarter of a peak of at least this many, the read
# buffers they freed are handed back to the operating system (glibc keeps freed memory in
# its arenas otherwise).
TRIM_AFTER_PEAK = 64


def raise_open_file_limit() -> int:
    """Raise the soft descriptor limit to the hard one; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return hard if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def connection_cap(max_connections: int, open_files: int) -> int:
    """The overall cap that the descriptor limit can honour: every connection may hold a
    socket and an open blob file at once."""
    return max(1, min(max_connections, (open_files - RESERVED_DESCRIPTORS) // 2))


def _libc_function(name: str) -> Any:
    """A function of glibc's malloc, or None on a C library without it (musl, macOS)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def _release_free_memory() -> Callable[[], None]:
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int

    def release_free_memory() -> None:
        # A closed connection is freed by reference counting (tests/server/
        # test_reference_cycles.py); the collection is for what other code left in
        # cycles, which neither Python nor malloc_trim could reuse or return until then.
        gc.collect()
        if trim is not None:
            trim(0)

    return release_free_memory


@dataclass
class Limits:
    max_connections: int
    max_connections_per_client: int
    header_timeout: float
    body_timeout: float
    open: int = 0
    by_address: dict[str, int] = field(default_factory=dict)
    peak: int = 0
    trim: Callable[[], None] = field(default_factory=_release_free_memory)

    def admit(self, address: str) -> int | None:
        """Count a new connection in, or return the status refusing it."""
        if self.open >= self.max_connections:
            return 503
        held = self.by_address.get(address, 0)
        if self.max_connections_per_client and held >= self.max_connections_per_client:
            return 429
        self.open += 1
        self.peak = max(self.peak, self.open)
        self.by_address[address] = held + 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        held = self.by_address[address] - 1
        if held:
            self.by_address[address] = held
        else:
            del self.by_address[address]
        if self.peak >= TRIM_AFTER_PEAK and self.open <= self.peak // 4:
            self.peak = self.open
            self.trim()


_REASONS = {408: "Request Timeout", 429: "Too Many Requests", 503: "Service Unavailable"}
_MESSAGES = {
    408: ("UNKNOWN", "the request was not received in time"),
    429: ("TOOMANYREQUESTS", "too many connections from this address"),
    503: ("UNAVAILABLE", "the server has no room for another connection"),
}


def refusal(status: int) -> bytes:
    code, message = _MESSAGES[status]
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if status != 408:
        head.append(f"Retry-After: {RETRY_AFTER_SECONDS}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _peer(stream: Any) -> str:
    sock = getattr(stream, "socket", None) or stream.transport_stream.socket
    try:
        peer = sock.getpeername()
    except OSError:
        return "?"
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def server_class(limits: Limits) -> type[TCPServer]:
    class Connection(TCPServer):
        async def run(self) -> None:
            address = _peer(self.stream)
            refused = limits.admit(address)
            if refused is not None:
                await self._refuse(refused)
                return
            self._read_size = SMALL_READ
            self._sent_response = False
            self._header_deadline: float | None = trio.current_time() + limits.header_timeout
            # hypercorn types every stream as TLS; on a plain port it is a SocketStream.
            stream: Any = self.stream
            try:
                if isinstance(stream, trio.SSLStream) and not await self._handshake(stream):
                    return
                # hypercorn's own handshake call returns at once: trio's is idempotent.
                await super().run()
            finally:
                # hypercorn's protocol objects hold `self.protocol_send`, a reference cycle
                # through this object: left in place, each closed connection (its socket,
                # parser and buffers) would wait for a full garbage collection instead of
                # going as soon as it closes.
                self.__dict__.pop("protocol", None)
                self.__dict__.pop("_task_group", None)
                limits.release(address)

        async def _handshake(self, stream: trio.SSLStream[Any]) -> bool:
            # The handshake is part of the time a client has to send its request head.
            assert self._header_deadline is not None
            deadline = min(
                self._header_deadline, trio.current_time() + self.config.ssl_handshake_timeout
            )
            with trio.move_on_at(deadline):
                if not await tls.finish_handshake(stream):
                    return False
                cn = tls.peer_cn(stream)
                if cn is not None:
                    self.state = ConnectionState({**self.state, tls.CLIENT_CN_KEY: cn})
                return True
            await stream.transport_stream.aclose()
            return False

        async def _refuse(self, status: int) -> None:
            stream: Any = self.stream
            with trio.move_on_after(REFUSAL_TIMEOUT):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    # On a TLS port this completes the handshake first, so the client can
                    # read why it was turned away.
                    await stream.send_all(refusal(status))
                    if not isinstance(stream, trio.SSLStream):
                        # TLS has no half-close; the client closes after the answer,
                        # which says `Connection: close`.
                        await stream.send_eof()
                    # Closing with the request unread would reset the connection and
                    # could destroy the answer before the client reads it.
                    while await stream.receive_some(SMALL_READ):
                        pass
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()

        async def protocol_send(self, event: Event) -> None:
            if isinstance(event, Updated) and event.idle:
                # The next request's head has its own deadline, started by its first byte.
                self._header_deadline = None
                self._sent_response = False
            elif isinstance(event, RawData):
                self._sent_response = True
            await super().protocol_send(event)

        def _their_state(self) -> Any:
            connection = getattr(getattr(self, "protocol", None), "protocol", None)
            return getattr(getattr(connection, "connection", None), "their_state", None)

        def _timeout(self) -> tuple[float, bool]:
            """Seconds the next read may take, and whether a request is under way."""
            state = self._their_state()
            if state is h11.IDLE:
                if self._header_deadline is None:
                    return math.inf, False
                return max(0.0, self._header_deadline - trio.current_time()), True
            if state is h11.SEND_BODY:
                return limits.body_timeout, True
            return math.inf, False

        async def _read_data(self) -> None:
            while True:
                timeout, in_request = self._timeout()
                try:
                    with trio.fail_after(timeout):
                        data = await self.stream.receive_some(self._read_size)
                except trio.TooSlowError:
                    if in_request and not self._sent_response:
                        await self._answer_timeout()
                    break
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if data and self._header_deadline is None and self._their_state() is h11.IDLE:
                    self._header_deadline = trio.current_time() + limits.header_timeout
                # Large reads only while the client keeps them full (a blob streaming in).
                if len(data) == self._read_size:
                    self._read_size = LARGE_READ
                elif len(data) < SMALL_READ:
                    self._read_size = SMALL_READ
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
            # hypercorn's keep-alive timer would keep a connection the client already
            # closed (and everything it holds) alive until the timer runs out.
            await self.idle_task.stop()
            await self.protocol.handle(Closed())

        async def _answer_timeout(self) -> None:
            async with self.send_lock:
                with (
                    trio.move_on_after(REFUSAL_TIMEOUT),
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    await self.stream.send_all(refusal(408))

    return Connection


def install(limits: Limits) -> None:
    """Make this process's hypercorn trio worker serve every connection under `limits`."""
    hypercorn_run.TCPServer = server_class(limits)  # type: ignore[attr-defined]
