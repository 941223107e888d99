"""Running the app under hypercorn's trio worker: one process, or several on one data dir."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from regd import config as cfg
from regd import tls
from regd.app import RegdApp, create_app
from regd.auth.wiring import check_exposure
from regd.clock import SYSTEM_CLOCK
from regd.metadata import MetadataStore
from regd.registry import Registry
from regd.startup_check import warn_if_metadata_lost
from regd.storage import FilesystemDriver, MemoryDriver, StorageDriver

log = logging.getLogger("regd.server")

SOCKET_READ_SIZE = 1024 * 1024


class _LineFormatter(logging.Formatter):
    """One line per record: `time level logger message`, exceptions folded into it."""

    def converter(self, secs: float | None) -> time.struct_time:
        return time.gmtime(secs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", " | ")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _LineFormatter(
            "ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s pid=%(process)d "
            "%(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_registry(config: cfg.Config) -> Registry:
    storage: StorageDriver = (
        MemoryDriver() if config.storage == "memory" else FilesystemDriver(config.blob_root)
    )
    clock = SYSTEM_CLOCK
    metadata = MetadataStore(
        config.database_url, clock=clock, write_timeout=config.database_write_timeout
    )
    return Registry.create(
        storage,
        metadata,
        clock=clock,
        max_uploads_per_repository=config.max_uploads_per_repository,
    )


def prepare(config: cfg.Config) -> None:
    """Create the data directory and the schema once, before any worker serves."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(config.database_url)
    try:
        store.create_schema()
    finally:
        store.close()


def _tune_hypercorn() -> None:
    # hypercorn reads sockets 64 KiB at a time; blob pushes are dominated by the per-read
    # cost of the event loop, h11 and Quart, so fewer, larger reads raise throughput.
    import hypercorn.trio.tcp_server as tcp_server

    tcp_server.MAX_RECV = SOCKET_READ_SIZE


def hypercorn_config(config: cfg.Config) -> HypercornConfig:
    _tune_hypercorn()
    hc = tls.ServerConfig(tls.settings_from(config))
    hc.bind = [config.addr]
    hc.worker_class = "trio"
    hc.workers = config.workers
    hc.graceful_timeout = config.graceful_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("regd.hypercorn")
    hc.keep_alive_timeout = 75
    # Saves a header on every response; clients identify registries by the API version.
    hc.include_server_header = False
    return hc


def worker_app() -> RegdApp:
    """The app of one worker process; its configuration arrives in the environment."""
    config = cfg.load(env=os.environ)
    setup_logging(config.log_level)
    return create_app(build_registry(config), config)


async def _serve_one(config: cfg.Config, hc: HypercornConfig) -> None:
    registry = build_registry(config)
    app = create_app(registry, config)
    stop = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal=%s shutting down gracefully", signal.Signals(signum).name)
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        await hypercorn_serve(app, hc, shutdown_trigger=stop.wait)
        nursery.cancel_scope.cancel()
    await registry.aclose()


def serve(config: cfg.Config) -> None:
    setup_logging(config.log_level)
    tls.check(config)
    prepare(config)
    warn_if_metadata_lost(config)
    check_exposure(config)  # auth: no open registry on a public address unless asked
    hc = hypercorn_config(config)
    log.info(
        "serving addr=%s data_dir=%s database=%s workers=%d",
        config.addr,
        config.data_dir,
        "postgresql" if config.database_url.startswith("postgres") else "sqlite",
        config.workers,
    )
    if config.workers == 1:
        trio.run(_serve_one, config, hc)
        return
    from hypercorn.run import run

    os.environ.update(config.to_env())
    hc.application_path = "regd.server:worker_app()"
    tls.forward_hangup_to_workers()
    code = run(hc)
    if code:
        raise SystemExit(code)
