"""Running the app under hypercorn's trio worker: one process, or several on one data dir."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from sqlalchemy.exc import SQLAlchemyError

from regd import config as cfg
from regd import sdnotify, tls
from regd.app import create_app
from regd.auth.policy import Pattern
from regd.auth.wiring import check_exposure
from regd.clock import SYSTEM_CLOCK
from regd.connections import (
    Limits,
    connection_cap,
    install,
    raise_open_file_limit,
    worker_share,
)
from regd.errors import BackendError, StartupError
from regd.metadata import MetadataStore
from regd.observability import metrics as obs
from regd.observability.logs import JsonFormatter
from regd.registry import Quota, Registry
from regd.startup_check import warn_if_metadata_lost
from regd.storage import (
    FilesystemDriver,
    MemoryDriver,
    S3Driver,
    S3Options,
    StorageDriver,
    StorageError,
)

log = logging.getLogger("regd.server")


class _LineFormatter(logging.Formatter):
    """One line per record: `time level logger message`, exceptions folded into it."""

    def converter(self, secs: float | None) -> time.struct_time:
        return time.gmtime(secs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", " | ")


def setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else _LineFormatter(
            "ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s pid=%(process)d "
            "%(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def s3_options(config: cfg.Config) -> S3Options:
    return S3Options(
        bucket=config.s3_bucket or "",
        prefix=config.s3_prefix,
        region=config.s3_region,
        endpoint_url=config.s3_endpoint_url,
        path_style=config.s3_path_style,
        access_key=config.s3_access_key,
        secret_key=config.s3_secret_key,
        encryption=config.s3_encryption,
        storage_class=config.s3_storage_class,
        ca_bundle=None if config.s3_ca_bundle is None else str(config.s3_ca_bundle),
        redirect=config.s3_redirect,
        redirect_expiry=config.s3_redirect_expiry,
        chunk_size=config.s3_chunk_size,
        copy_threshold=config.s3_copy_threshold,
        max_connections=config.s3_max_connections,
    )


def storage_driver(config: cfg.Config) -> StorageDriver:
    if config.storage == "memory":
        return MemoryDriver()
    if config.storage == "s3":
        return S3Driver(s3_options(config))
    return FilesystemDriver(config.blob_root)


def check_s3(config: cfg.Config) -> None:
    """Stop at start when the bucket cannot be used (missing, refused, unreachable)."""
    try:
        driver = S3Driver(s3_options(config))
        try:
            trio.run(driver.check)
        finally:
            driver.close()
    except StorageError as exc:
        raise StartupError(f"cannot use storage {s3_options(config).where()}: {exc}") from None


def build_registry(config: cfg.Config) -> Registry:
    storage = storage_driver(config)
    clock = SYSTEM_CLOCK
    metadata = MetadataStore(
        config.database_url, clock=clock, write_timeout=config.database_write_timeout
    )
    if config.metrics:
        metrics = obs.enable()
        storage = metrics.timed(storage)
        metadata.observe = metrics.database_operation
    return Registry.create(
        storage,
        metadata,
        clock=clock,
        max_uploads_per_repository=config.max_uploads_per_repository,
        mirrors=config.mirror,
        quotas=[_quota(rule) for rule in config.quota],
        quota_refresh=config.quota_refresh,
        maintenance_refresh=config.maintenance_refresh,
    )


def _quota(rule: cfg.QuotaRule) -> Quota:
    # The access policy's glob syntax; no caller is involved, so `{user}` never matches.
    pattern = Pattern(rule.repositories)
    return Quota(rule.repositories, rule.limit, lambda name: pattern.matches(name, None))


def _one_line(exc: BaseException) -> str:
    """The cause of a start-up failure as one line: the driver's own words, not the SQL."""
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, OSError) and cause.strerror:
        where = f"{cause.filename}: " if cause.filename else ""
        return f"{where}{cause.strerror}"
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def _shown_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def prepare(config: cfg.Config) -> None:
    """Create the data directory and the schema once, before any worker serves.

    Everyday problems (a read-only or missing directory, an unreachable database) raise
    StartupError with one line naming the path or address and the cause."""
    directories = [config.data_dir]
    if config.storage == "filesystem" and config.blob_root != config.data_dir:
        directories.append(config.blob_root)
    if config.storage == "memory" and config.database:
        directories = []
    for directory in directories:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename not in (None, str(directory)) else ""
            raise StartupError(
                f"cannot create data dir {directory}: {exc.strerror or exc}{where}"
            ) from None
        try:
            # Fails now on a read-only mount or a directory owned by someone else, rather
            # than on the first push.
            with tempfile.TemporaryFile(dir=directory, prefix=".regd-write-check-"):
                pass
        except OSError as exc:
            raise StartupError(
                f"cannot write in data dir {directory}: {exc.strerror or exc}"
            ) from None
    if config.storage == "s3":
        check_s3(config)
    store = MetadataStore(config.database_url)
    try:
        store.create_schema()
    except (BackendError, SQLAlchemyError, OSError) as exc:
        raise StartupError(
            f"cannot open database {_shown_url(config.database_url)}: {_one_line(exc)}"
        ) from None
    finally:
        store.close()


def hypercorn_config(config: cfg.Config) -> HypercornConfig:
    hc = tls.ServerConfig(tls.settings_from(config))
    hc.bind = [config.bind]
    if config.metrics_bind is not None:
        hc.bind.append(config.metrics_bind)
    hc.worker_class = "trio"
    hc.workers = config.workers
    hc.graceful_timeout = config.graceful_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("regd.hypercorn")
    hc.keep_alive_timeout = config.keep_alive_timeout
    hc.h11_max_incomplete_size = config.max_header_size
    # Saves a header on every response; clients identify registries by the API version.
    hc.include_server_header = False
    return hc


def bind(config: cfg.Config, hc: HypercornConfig) -> Sockets:
    try:
        sockets = hc.create_sockets()
        for sock in _listening(sockets):
            sock.listen(hc.backlog)
    except OSError as exc:
        where = (
            config.addr
            if config.metrics_addr is None
            else f"{config.addr} or {config.metrics_addr}"
        )
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sockets


def _listening(sockets: Sockets) -> list[socket.socket]:
    """The TCP sockets regd serves on: the TLS ones when it serves HTTPS."""
    return [*sockets.secure_sockets, *sockets.insecure_sockets]


def limits_for(config: cfg.Config) -> Limits:
    """This worker's limits: the connection caps are the whole server's, so each of the
    workers takes its share."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return Limits(
        max_connections=connection_cap(worker_share(config.max_connections, config.workers), soft),
        max_connections_per_client=worker_share(config.max_connections_per_client, config.workers),
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
        send_timeout=config.send_timeout,
        min_body_rate=config.min_body_rate,
    )


def freeze_long_lived() -> None:
    """Leave what exists before serving out of every later garbage collection.

    A full collection walks every object the process holds, and a worker holds hundreds
    of thousands that live as long as it does (modules, SQLAlchemy's tables and
    statements, the application). Under a stream of manifest GETs each worker ran one
    every second or two, each 100-140 ms long: every request on that worker waited it
    out (the benchmark's 99th percentile of GET latency went from about 90 ms to about
    20 ms without them), and they took about a tenth of its CPU. Frozen, those objects
    are skipped; what requests allocate is collected as before. What is garbage now is
    collected first, so none of it is kept.
    """
    gc.collect()
    gc.freeze()


async def _serve_worker(
    config: cfg.Config, sockets: Sockets, parent_stop: Connection | None = None
) -> None:
    """Serve on already bound sockets until SIGTERM or SIGINT (or the parent says stop),
    letting requests in flight finish within graceful_timeout."""
    hc = hypercorn_config(config)
    limits = limits_for(config)
    install(limits)
    registry = build_registry(config)
    app = create_app(registry, config)
    freeze_long_lived()
    stop = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal=%s shutting down gracefully", signal.Signals(signum).name)
                app.draining.set()
                stop.set()
                return

    async def watch_parent(conn: Connection) -> None:
        # The parent never writes: the pipe turns readable when it closes its end, to stop
        # us, or when it dies. A thread blocks on it; abandoning it on cancel costs nothing.
        await trio.to_thread.run_sync(conn.poll, None, abandon_on_cancel=True)
        app.draining.set()
        stop.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            nursery.start_soon(limits.release_after_bursts)
            if parent_stop is not None:
                nursery.start_soon(watch_parent, parent_stop)
            await worker_serve(
                wrap_app(app, hc.wsgi_max_body_size, None),
                hc,
                sockets=sockets,
                shutdown_trigger=stop.wait,
            )
            nursery.cancel_scope.cancel()
    finally:
        await registry.aclose()


def _reuse_port_copy(sockets: Sockets, backlog: int) -> Sockets:
    """Listening sockets on the addresses of `sockets`, for one more worker.

    On one shared socket the worker that happens to wait in accept takes the next
    connection, and a burst of keep-alive clients can land on one worker: 32 wrk
    connections all on one of two workers in some runs, at half the request rate. With a
    socket each in one SO_REUSEPORT group, the kernel spreads connections over the
    workers by their addresses. Falls back to the shared sockets where that cannot be
    done (a Unix socket, a system without SO_REUSEPORT).
    """
    copies: dict[int, socket.socket] = {}
    try:
        for sock in _listening(sockets):
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                raise OSError("not a TCP socket")
            copy = socket.socket(sock.family, socket.SOCK_STREAM)
            copies[id(sock)] = copy
            copy.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            copy.bind(sock.getsockname())
            copy.listen(backlog)
    except (OSError, AttributeError) as exc:
        for copy in copies.values():
            copy.close()
        log.debug("workers share one listening socket: %s", exc)
        return sockets
    return Sockets(
        [copies[id(s)] for s in sockets.secure_sockets],
        [copies[id(s)] for s in sockets.insecure_sockets],
        [],
    )


def _worker_process(config: cfg.Config, sockets: Sockets, stop: Connection) -> None:
    setup_logging(config.log_level, config.log_format)
    trio.run(_serve_worker, config, sockets, stop)


def _supervise(config: cfg.Config, sockets: Sockets, metrics_dir: Path | None, backlog: int) -> int:
    """Run `config.workers` processes on the shared sockets.

    A signal to this process, or any worker's exit, stops all of them gracefully: each
    worker finishes its requests in flight (up to graceful_timeout) before it exits, and
    this process waits for every one of them."""
    ctx = multiprocessing.get_context("spawn")
    # Workers stop when this process closes its end of a pipe. (A shared Event hung here:
    # its set() waits for every waiter to acknowledge, and a worker that already exited
    # never does; it can also deadlock when a signal lands inside is_set().) The signal
    # handler only notes the signal; the loop below acts on it.
    stop_reader, stop_writer = ctx.Pipe(duplex=False)
    signalled: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        signalled.append(signum)

    def on_hangup(signum: int, frame: object) -> None:
        # Each worker reloads its own certificates in place (regd/tls.py).
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGHUP)

    # Workers inherit "ignore" until their own handlers are installed, so a Ctrl-C that
    # reaches the whole process group cannot kill one before it is ready, nor a SIGHUP
    # sent to reload certificates.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reloads = config.tls_cert is not None
    if reloads:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    own = [sockets, *(_reuse_port_copy(sockets, backlog) for _ in range(config.workers - 1))]
    workers = [
        ctx.Process(target=_worker_process, args=(config, own[i % len(own)], stop_reader))
        for i in range(config.workers)
    ]
    for worker in workers:
        worker.start()
    # Each worker holds its own copy now; ours would keep the pipe open for nothing.
    stop_reader.close()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if reloads:
        signal.signal(signal.SIGHUP, on_hangup)
    code = 0
    stopping = False
    while not stopping:
        finished = multiprocessing.connection.wait([w.sentinel for w in workers], timeout=0.5)
        if signalled:
            log.info("signal=%s stopping workers gracefully", signal.Signals(signalled[0]).name)
            stopping = True
        elif finished:
            exited = [w for w in workers if w.exitcode is not None]
            code = next((w.exitcode for w in exited if w.exitcode), 0) or 1
            log.error("a worker exited (status %s); stopping the others", exited[0].exitcode)
            stopping = True
    stop_writer.close()
    for extra in own[1:]:
        for sock in _listening(extra):
            sock.close()
    deadline = time.monotonic() + config.graceful_timeout + 10
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.is_alive():
            log.error("worker pid=%s did not stop in time; killing it", worker.pid)
            worker.kill()
            worker.join()
            code = code or 1
    if metrics_dir is not None:
        for worker in workers:
            if worker.pid is not None:
                obs.process_gone(worker.pid, metrics_dir)
    return code


def serve(config: cfg.Config) -> None:
    setup_logging(config.log_level, config.log_format)
    open_files = raise_open_file_limit()
    tls.check(config)
    prepare(config)
    warn_if_metadata_lost(config)
    check_exposure(config)  # auth: no open registry on a public address unless asked
    hc = hypercorn_config(config)
    sockets = bind(config, hc)
    log.info(
        "serving addr=%s data_dir=%s database=%s workers=%d open_files=%d max_connections=%d "
        "allocator=%s",
        config.addr,
        config.data_dir,
        "postgresql" if config.database_url.startswith("postgres") else "sqlite",
        config.workers,
        open_files,
        config.workers
        * connection_cap(worker_share(config.max_connections, config.workers), open_files),
        os.environ.get("PYTHONMALLOC", "pymalloc"),
    )
    # Made before the workers start, so each inherits it (regd.observability.metrics).
    metrics_dir = obs.make_directory() if config.metrics else None
    sdnotify.ready(config.addr)
    try:
        if config.workers == 1:
            if config.tls_cert is not None:
                # Until the worker's reload handler is in place, SIGHUP must not end it.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            trio.run(_serve_worker, config, sockets)
            return
        code = _supervise(config, sockets, metrics_dir, hc.backlog)
    finally:
        sdnotify.stopping()
        for sock in _listening(sockets):
            sock.close()
        if metrics_dir is not None:
            obs.remove_directory(metrics_dir)
    if code:
        raise SystemExit(code)
