"""TLS for `regd serve`: certificates served by hypercorn, reloaded in place on SIGHUP,
and the verified client certificate's common name handed to the application.

hypercorn builds its server `SSLContext` once per process and hands it to trio's
`SSLListener`, which calls `wrap_bio` once per accepted connection. `ReloadingContext` is
that context: its `wrap_bio` delegates to whichever complete context was loaded last, so a
reload swaps one reference, new handshakes use the new chain and connections already open
keep the context they started with. A reload that fails keeps the current context.

hypercorn puts nothing about TLS into the ASGI scope. The narrowest place that sees both
the TLS stream and the per-connection state copied into every request's `scope["state"]`
is its trio `TCPServer`; `_TLSConnection` completes the handshake there and records the
peer's common name. Peeking at the first byte before the handshake also lets it answer a
client that speaks plain HTTP to the TLS port with a 400 that says so.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import ConnectionState

from regd.errors import ConfigError

log = logging.getLogger("regd.tls")

CLIENT_AUTH_MODES = ("require", "optional")
# The key in the ASGI scope's per-connection "state" that holds the verified client
# certificate's subject common name.
CLIENT_CN_KEY = "regd.tls_client_cn"


class TLSConfigError(ConfigError):
    """A certificate, key or CA file that cannot be served; the message names the file."""


@dataclass(frozen=True)
class TLSSettings:
    cert: Path
    key: Path
    client_ca: Path | None = None
    client_auth: str = "require"
    # HTTP/2 is not offered: measured against regd, hypercorn's HTTP/2 pulled blobs in
    # parallel at a third of HTTP/1.1's rate and served fewer manifests per second.
    alpn: tuple[str, ...] = ("http/1.1",)
    ciphers: str = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _refuse_password(path: Path) -> Callable[[], str]:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    def refuse() -> str:
        raise TLSConfigError(f"tls_key: {path} is encrypted; regd needs an unencrypted key")

    return refuse


def build_context(settings: TLSSettings) -> ssl.SSLContext:
    """A complete server context from the files as they are now.

    Raises TLSConfigError with one line naming the file at fault."""
    cert_pem = _read("tls_cert", settings.cert)
    key_pem = _read("tls_key", settings.key)
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise TLSConfigError(f"tls_cert: {settings.cert} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in key_pem:
        raise TLSConfigError(f"tls_key: {settings.key} holds no PEM private key")
    # A bare TLS_SERVER context, not create_default_context(): that one also trusts the
    # system's CAs, which would let any publicly issued certificate in as a client.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS compression lets an observer recover secrets from lengths (CRIME).
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_ciphers(settings.ciphers)
    context.set_alpn_protocols(list(settings.alpn))
    try:
        context.load_cert_chain(
            str(settings.cert), str(settings.key), password=_refuse_password(settings.key)
        )
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).upper()
        if "KEY_VALUES_MISMATCH" in reason:
            raise TLSConfigError(
                f"tls_key: {settings.key} does not match the certificate in {settings.cert}"
            ) from None
        raise TLSConfigError(
            f"tls_cert: cannot load {settings.cert} with key {settings.key}: {exc.reason or exc}"
        ) from None
    if settings.client_ca is not None:
        ca_pem = _read("tls_client_ca", settings.client_ca)
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise TLSConfigError(f"tls_client_ca: {settings.client_ca} holds no PEM certificate")
        try:
            context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"tls_client_ca: cannot load {settings.client_ca}: {exc.reason or exc}"
            ) from None
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.client_auth == "require" else ssl.CERT_OPTIONAL
        )
    return context


class ReloadingContext(ssl.SSLContext):
    """A server context whose certificates can be replaced while connections are open."""

    settings: TLSSettings
    _current: ssl.SSLContext

    def __new__(cls, settings: TLSSettings) -> ReloadingContext:
        self = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        self.settings = settings
        self._current = build_context(settings)
        return self

    def __init__(self, settings: TLSSettings) -> None:
        pass

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return self._current.wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )

    def reload(self) -> bool:
        """Load the files again; keep the current context if they cannot be served."""
        try:
            fresh = build_context(self.settings)
        except TLSConfigError as exc:
            log.error("tls reload failed, still serving the previous certificate: %s", exc)
            return False
        self._current = fresh
        log.info("tls reloaded cert=%s key=%s", self.settings.cert, self.settings.key)
        return True


def settings_from(config: Any) -> TLSSettings | None:
    """The TLS settings of a regd configuration, or None when it serves plain HTTP."""
    if config.tls_cert is None:
        return None
    return TLSSettings(
        cert=Path(config.tls_cert),
        key=Path(config.tls_key),
        client_ca=Path(config.tls_client_ca) if config.tls_client_ca else None,
        client_auth=config.tls_client_auth,
    )


def check(config: Any) -> None:
    """Refuse to start with TLS files that cannot be served (one line naming the file)."""
    settings = settings_from(config)
    if settings is not None:
        build_context(settings)


def client_cn(scope: Mapping[str, object]) -> str | None:
    """The subject CN of the client certificate verified on this request's connection."""
    state = scope.get("state")
    if not isinstance(state, Mapping):
        return None
    value = state.get(CLIENT_CN_KEY)
    return value if isinstance(value, str) else None


def _subject_cn(peer: Any) -> str | None:
    for rdn in (peer or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


# nginx's answer to the same mistake; a client speaking plain HTTP gets a reason, not a reset.
PLAIN_HTTP_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 38\r\n"
    b"connection: close\r\n\r\nthis port speaks HTTPS, not plain HTTP\n"
)
_TLS_HANDSHAKE_RECORD = 0x16


def _install_tls_connection_hook() -> None:
    import hypercorn.trio.run as trio_run
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(trio_run, "TCPServer", None) is not TCPServer:
        return  # installed already

    class _TLSConnection(TCPServer):
        async def run(self) -> None:
            stream: Any = self.stream
            if isinstance(stream, trio.SSLStream):
                try:
                    with trio.fail_after(self.config.ssl_handshake_timeout):
                        if not await _starts_with_tls(stream):
                            await stream.transport_stream.send_all(PLAIN_HTTP_REPLY)
                            await stream.transport_stream.aclose()
                            return
                        await stream.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError, OSError):
                    await stream.transport_stream.aclose()
                    return
                cn = _subject_cn(stream.getpeercert())
                if cn is not None:
                    self.state = ConnectionState({**self.state, CLIENT_CN_KEY: cn})
            # hypercorn's own handshake call returns at once: trio's handshake is idempotent.
            await super().run()

    # worker_serve looks the name up when it starts its listeners, after this runs.
    setattr(trio_run, "TCPServer", _TLSConnection)  # noqa: B010


async def _starts_with_tls(stream: trio.SSLStream[Any]) -> bool:
    first = await stream.transport_stream.socket.recv(1, socket.MSG_PEEK)
    return not first or first[0] == _TLS_HANDSHAKE_RECORD


class _ReloadOnHangup:
    """The SIGHUP handler of a serving process: reload its context in place.

    A plain signal handler rather than a trio task because a hypercorn worker process
    runs no code of regd's outside the app; the work is two small file reads."""

    def __init__(self, context: ReloadingContext) -> None:
        self.context = context

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.context.reload()


class ServerConfig(HypercornConfig):
    """hypercorn's configuration with regd's TLS; picklable, so it reaches every worker."""

    def __init__(self, tls: TLSSettings | None = None) -> None:
        self.tls = tls
        if tls is not None:
            # hypercorn decides from these two whether its sockets are secure.
            self.certfile = str(tls.cert)
            self.keyfile = str(tls.key)

    def create_ssl_context(self) -> ssl.SSLContext | None:
        # Called once in each serving process, just before its listeners are made.
        if self.tls is None:
            return None
        context = ReloadingContext(self.tls)
        _install_tls_connection_hook()
        signal.signal(signal.SIGHUP, _ReloadOnHangup(context))
        return context


def forward_hangup_to_workers() -> None:
    """Make hypercorn's supervisor pass SIGHUP on to its workers instead of restarting them.

    Its own answer to SIGHUP stops every worker and starts new ones; each regd worker reloads
    its certificates in place, so passing the signal on keeps open connections and, when the
    new files are bad, keeps serving the old certificate instead of failing to start."""
    import hypercorn.run as hypercorn_run

    # Workers are spawned before the supervisor installs its handlers; ignoring SIGHUP
    # until then is inherited across exec, so an early signal cannot kill a new worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setattr(hypercorn_run, "signal", _SupervisorSignals())  # noqa: B010


def _forward(signum: int, frame: FrameType | None) -> None:
    for child in multiprocessing.active_children():
        if child.pid is not None:
            os.kill(child.pid, signal.SIGHUP)


class _SupervisorSignals:
    """The `signal` module as hypercorn's supervisor sees it, with SIGHUP forwarded."""

    def __getattr__(self, name: str) -> Any:
        return getattr(signal, name)

    def signal(self, signum: int, handler: Any) -> Any:
        if signum == signal.SIGHUP:
            handler = _forward
        return signal.signal(signum, handler)
