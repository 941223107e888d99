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
  byte of a later request) and the request body `body_timeout` between two reads and an
  average of `min_body_rate` after that grace, then answers `408` and closes;
- drops a client that takes no part of an answer for `send_timeout` (hypercorn would wait
  for it for ever);
- on a TLS port, completes the handshake within the head's deadline and records the
  verified client certificate's common name in the connection's scope state
  (regd/tls.py);
- sends a blob read from a local file on a plain-TCP port with sendfile, from the page
  cache straight to the socket (see `_send_file`);
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
import os
import re
import resource
import socket
import struct
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
from regd.api.direct import SEND_FILE_KEY
from regd.file_send import FileRegion, sendfile_burst
from regd.keep_alive import KeepAlive

log = logging.getLogger("regd.server")

SMALL_READ = 64 * 1024
LARGE_READ = 1024 * 1024
# Descriptors kept free for what serving a connection opens besides its socket: blob
# files, database connections, worker threads' pipes.
RESERVED_DESCRIPTORS = 64
# How long a refusal may take to reach a client before the connection is dropped anyway.
REFUSAL_TIMEOUT = 5.0
RETRY_AFTER_SECONDS = 1
# An answer is handed to the socket in pieces this large, each under send_timeout.
SEND_PIECE = 64 * 1024
# An answer with a body up to this long leaves in one write with its head.
COALESCE_BODY = 64 * 1024
# When the open connections fall to a quarter of a peak of at least this many, the read
# buffers they freed are handed back to the operating system (glibc keeps freed memory in
# its arenas otherwise).
TRIM_AFTER_PEAK = 64
# Worker threads started for a burst exit after trio's thread cache keeps them idle 10 s,
# and free what they held only then: one more release once they are gone brought regd
# from 1.17 to 1.09 times its memory before 2,000 slow clients. Counted from the burst's
# first release, while its last connections may still be closing, hence the margin.
LATE_TRIM_DELAY = 20.0


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


def worker_share(cap: int, workers: int) -> int:
    """One worker's part of a whole-server cap (0, no cap, stays 0). Rounded up: the
    kernel hands connections to workers unevenly, and rounding down would refuse clients
    before the server as a whole reached its cap."""
    return cap and max(1, math.ceil(cap / workers))


def _libc_function(name: str) -> Any:
    """A function of glibc's malloc, or None on a C library without it (musl, macOS)."""
    # The C library is already loaded into the process: look in what is loaded (no
    # `find_library`, which runs `ldconfig -p` in a subprocess at every start).
    try:
        return getattr(ctypes.CDLL(None), name)
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
    # Longest time a piece of an answer may wait for the client to take it in.
    send_timeout: float = 60.0
    # Bytes per second a request body must average once body_timeout has passed (0: no rule).
    min_body_rate: float = 0.0
    open: int = 0
    by_address: dict[str, int] = field(default_factory=dict)
    peak: int = 0
    trim: Callable[[], None] = field(default_factory=_release_free_memory)
    burst_over: trio.Event = field(default_factory=trio.Event)
    last_burst: int = 0

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
            if not self.burst_over.is_set():
                self.last_burst = self.peak
            self.peak = self.open
            self.trim()
            self.burst_over.set()

    async def release_after_bursts(self) -> None:
        """Release memory once more after each burst, when its worker threads are gone."""
        while True:
            await self.burst_over.wait()
            await trio.sleep(LATE_TRIM_DELAY)
            self.burst_over = trio.Event()
            self.trim()
            log.info(
                "connections=%d after a burst of %d: freed memory returned to the system",
                self.open,
                self.last_burst,
            )


_REASONS = {408: "Request Timeout", 429: "Too Many Requests", 503: "Service Unavailable"}
_MESSAGES = {
    408: ("UNKNOWN", "the request was not received in time"),
    429: ("TOOMANYREQUESTS", "too many connections from this address"),
    503: ("UNAVAILABLE", "the server has no room for another connection"),
}


BODY_TOO_SLOW = "the request body arrived slower than the minimum rate (min_body_rate)"


def refusal(status: int, message: str | None = None) -> bytes:
    code, default = _MESSAGES[status]
    message = message or default
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


def _socket(stream: Any) -> Any:
    return getattr(stream, "socket", None) or stream.transport_stream.socket


def _drop(stream: Any) -> None:
    """Make closing `stream` reset the connection: the answer it could not send is
    discarded at once instead of lingering in the kernel for a client that reads nothing."""
    with contextlib.suppress(OSError):
        _socket(stream).setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _peer(stream: Any) -> str:
    sock = _socket(stream)
    try:
        peer = sock.getpeername()
    except OSError:
        return "?"
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d{1,19})\r\n", re.IGNORECASE)


def _small_body(head: bytes) -> bool:
    """Whether an answer's head announces a body of at most COALESCE_BODY bytes."""
    found = _CONTENT_LENGTH.search(head)
    return found is not None and int(found[1]) <= COALESCE_BODY


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
            # A small answer's head, held back to leave in one write with its body.
            self._held: bytes | None = None
            self._was_sending_body = False
            # The current request body's bytes so far, and the time spent waiting for them
            # (None between bodies).
            self._body_received = 0
            self._body_waited: float | None = None
            self._header_deadline: float | None = trio.current_time() + limits.header_timeout
            # hypercorn types every stream as TLS; on a plain port it is a SocketStream.
            stream: Any = self.stream
            if isinstance(stream, trio.SocketStream):
                self.state = ConnectionState({**self.state, SEND_FILE_KEY: self._send_file})
            self._idle = KeepAlive(
                self.config.keep_alive_timeout, self.context.terminated, self._initiate_server_close
            )
            self.idle_task = self._idle
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
                # The keep-alive timer holds this object's close method.
                self.__dict__.pop("_idle", None)
                self.__dict__.pop("idle_task", None)
                self.state.pop(SEND_FILE_KEY, None)
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
                data = self._coalesced(event.data)
                # The end of a body of known length is no bytes at all (h11's
                # EndOfMessage): no write, no lock, no deadline for it.
                if data:
                    await self._send(data)
                return
            await super().protocol_send(event)

        def _h11(self) -> h11.Connection | None:
            wrapper = getattr(self, "protocol", None)
            connection = getattr(getattr(wrapper, "protocol", None), "connection", None)
            return connection if isinstance(connection, h11.Connection) else None

        def _coalesced(self, data: bytes) -> bytes | None:
            """What to write for `data`; None to hold it back for now.

            A small answer leaves as one write: its head (which hypercorn hands over as
            soon as the application starts the answer) waits for its body. Two writes
            cost a manifest GET a second send, a second segment and a second wake-up of
            the client; a HEAD, whose head is all there is, never had them.
            """
            connection = self._h11()
            sending_body = connection is not None and connection.our_state is h11.SEND_BODY
            started = sending_body and not self._was_sending_body
            self._was_sending_body = sending_body
            held, self._held = self._held, None
            if held is not None:
                # Only a head announcing at most COALESCE_BODY bytes is held.
                return held + data
            if started and _small_body(data):
                self._held = data
                return None
            return data

        async def _send(self, data: bytes) -> None:
            # hypercorn shields the whole write, so a client that stops reading would hold
            # the connection, its task and the open blob for ever (and stall a graceful
            # stop). Each piece gets send_timeout to leave: a slow reader that keeps taking
            # data is fine, one that takes none is dropped.
            view = memoryview(data)
            async with self.send_lock:
                try:
                    with trio.CancelScope(shield=True):
                        await self._send_view(view)
                except trio.TooSlowError:
                    log.info(
                        "client=%s stopped reading the answer for %gs; closing",
                        _peer(self.stream),
                        limits.send_timeout,
                    )
                    _drop(self.stream)
                    await trio.aclose_forcefully(self.stream)
                    await self.protocol.handle(Closed())
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.protocol.handle(Closed())

        async def _send_view(self, view: memoryview) -> None:
            stream: Any = self.stream
            if not isinstance(stream, trio.SocketStream):
                # TLS: the stream's own send_all, a piece at a time.
                for start in range(0, len(view), SEND_PIECE):
                    with trio.fail_after(limits.send_timeout):
                        await stream.send_all(view[start : start + SEND_PIECE])
                return
            # Plain TCP: each write takes what the kernel's buffer has room for, and each
            # wait for room has send_timeout to end. Fixed 64 KiB pieces through send_all
            # cost twice the CPU of a 1 GiB pull (a deadline and a wait per piece); and
            # trio's own send goes round the scheduler even when the kernel takes the
            # bytes at once, which with its deadline cost a small answer more than the
            # write itself. So the socket is written directly (it is non-blocking), and
            # only a full buffer is waited for, under a deadline.
            sock, sent = stream.socket, 0
            try:
                while sent < len(view):
                    try:
                        # The descriptor is asked for each time: after a close it is -1,
                        # where a number kept from before could name a newer socket.
                        sent += os.write(sock.fileno(), view[sent:])
                    except BlockingIOError:
                        with trio.fail_after(limits.send_timeout):
                            await trio.lowlevel.wait_writable(sock)
            except OSError as exc:
                # What send_all would have raised: the peer is gone.
                raise trio.BrokenResourceError(str(exc)) from exc

        async def _send_file(self, fd: int, offset: int, count: int) -> bool:
            """Send `count` bytes of the open file `fd` from `offset` as the body of the
            answer under way, with sendfile: the bytes go from the page cache to the socket
            without a copy through Python, which halves what a pull costs the worker.

            False, with nothing sent, when this answer's body cannot go this way (it is
            not HTTP/1.1 with a length); the caller then sends it itself. Raises
            trio.BrokenResourceError when the connection ended part way (the client left,
            stopped reading for send_timeout, or the file failed: the client sees a body
            short of its length, a failed transfer).
            """
            connection = self._h11()
            if connection is None or connection.our_state is not h11.SEND_BODY:
                return False
            # h11 passes the region through untouched (its sendfile hook) and accounts for
            # its length against the answer's Content-Length, as for bytes.
            region = FileRegion(fd, offset, count)
            parts: list[Any] = (
                connection.send_with_data_passthrough(h11.Data(data=region))  # type: ignore[arg-type]
                or []
            )
            held, self._held = self._held, None
            if held is not None:
                parts.insert(0, held)
            stream: Any = self.stream
            async with self.send_lock:
                try:
                    with trio.CancelScope(shield=True):
                        for part in parts:
                            if part is region:
                                await self._sendfile(stream.socket, region)
                            else:
                                await self._send_view(memoryview(part))
                    failure = None
                except trio.TooSlowError:
                    failure = f"stopped reading the answer for {limits.send_timeout:g}s"
                    log.info("client=%s %s; closing", _peer(self.stream), failure)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    failure = "the client went away"
                except OSError as exc:
                    failure = f"the file could not be sent: {exc}"
                    log.error("client=%s %s; closing", _peer(self.stream), failure)
                if failure is not None:
                    _drop(self.stream)
                    await trio.aclose_forcefully(self.stream)
            if failure is not None:
                await self.protocol.handle(Closed())
                raise trio.BrokenResourceError(failure)
            self._sent_response = True
            return True

        async def _sendfile(self, sock: Any, region: FileRegion) -> None:
            """Everything of `region` into the non-blocking socket, each wait for room
            under send_timeout. The sendfile calls run on a worker thread: a read from a
            slow disk must not stop the event loop."""
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("the connection was closed")
            # The thread sends through a duplicate of the descriptor: were the connection
            # closed meanwhile (a stop), the number itself could name a newer client's
            # socket by then, and the duplicate keeps naming this one until it is closed.
            out = os.dup(sock.fileno())
            try:
                while region.count:
                    if sock.fileno() == -1:
                        raise trio.ClosedResourceError("the connection was closed")
                    blocked = await trio.to_thread.run_sync(sendfile_burst, out, region)
                    if blocked:
                        with trio.fail_after(limits.send_timeout):
                            await trio.lowlevel.wait_writable(sock)
            finally:
                os.close(out)

        def _their_state(self) -> Any:
            connection = getattr(getattr(self, "protocol", None), "protocol", None)
            return getattr(getattr(connection, "connection", None), "their_state", None)

        def _timeout(self) -> tuple[float, bool, bool]:
            """Seconds the next read may take, whether a request is under way, and whether
            the limit is the body's minimum rate."""
            state = self._their_state()
            if state is not h11.SEND_BODY:
                self._body_waited = None
            if state is h11.IDLE:
                if self._header_deadline is None:
                    return math.inf, False, False
                return max(0.0, self._header_deadline - trio.current_time()), True, False
            if state is h11.SEND_BODY:
                if self._body_waited is None:
                    self._body_waited, self._body_received = 0.0, 0
                if not limits.min_body_rate:
                    return limits.body_timeout, True, False
                # After a grace of body_timeout, every byte buys 1/min_body_rate seconds
                # more, so a body that trickles in cannot hold its connection for hours.
                # Only time spent waiting for the client counts: a server too busy to read
                # does not make the client slow.
                left = (
                    limits.body_timeout
                    + self._body_received / limits.min_body_rate
                    - self._body_waited
                )
                if left < limits.body_timeout:
                    return max(0.0, left), True, True
                return limits.body_timeout, True, False
            return math.inf, False, False

        async def _read_data(self) -> None:
            while True:
                timeout, in_request, too_slow = self._timeout()
                started = trio.current_time()
                try:
                    if timeout == math.inf:
                        # No deadline to keep (between requests the keep-alive timer
                        # has one): no scope to enter and leave for every read.
                        data = await self.stream.receive_some(self._read_size)
                    else:
                        with trio.fail_after(timeout):
                            data = await self.stream.receive_some(self._read_size)
                except trio.TooSlowError:
                    if in_request and not self._sent_response:
                        await self._answer_timeout(BODY_TOO_SLOW if too_slow else None)
                    break
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if self._body_waited is not None:
                    self._body_waited += trio.current_time() - started
                    self._body_received += len(data)
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
            self._idle.close()
            await self.protocol.handle(Closed())

        async def _answer_timeout(self, message: str | None) -> None:
            async with self.send_lock:
                with (
                    trio.move_on_after(REFUSAL_TIMEOUT),
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    await self.stream.send_all(refusal(408, message))

    return Connection


def install(limits: Limits) -> None:
    """Make this process's hypercorn trio worker serve every connection under `limits`."""
    hypercorn_run.TCPServer = server_class(limits)  # type: ignore[attr-defined]
