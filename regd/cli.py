"""`regd`: the daemon's command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from regd import __version__
from regd import config as cfg
from regd.errors import RegdError

app = typer.Typer(
    name="regd",
    help="A container registry serving the OCI Distribution API.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_DEFAULTS = cfg.Config()


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            help="Print regd's version and exit.",
        ),
    ] = False,
) -> None:
    """A container registry serving the OCI Distribution API (v1.1) and Docker's v2 API.

    Settings come from a TOML file (--config or $REGD_CONFIG), REGD_* environment
    variables and the flags below, in rising order of precedence."""


def _seconds(value: float) -> str:
    return f"{value:g}s"


@app.command()
def serve(
    addr: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT to listen on; :PORT listens on every interface "
            f"(default: {_DEFAULTS.addr}; env: REGD_ADDR)"
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where blobs and the SQLite database live "
            "(default: ~/.local/share/regd; env: REGD_DATA_DIR)"
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="A TOML configuration file (env: REGD_CONFIG)"),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///PATH or postgresql://... "
            "(default: SQLite in the data dir; env: REGD_DATABASE)"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes sharing the data dir (default: one per usable CPU, "
            "the CPU affinity and any cgroup CPU quota counted, at most "
            f"{cfg.WORKERS_CAP}; 1 with storage = memory; env: REGD_WORKERS)"
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="debug, info, warning or error "
            f"(default: {_DEFAULTS.log_level}; env: REGD_LOG_LEVEL)"
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="text (key=value lines) or json (one object per line) "
            f"(default: {_DEFAULTS.log_format}; env: REGD_LOG_FORMAT)"
        ),
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="Log every request (default: on; env: REGD_ACCESS_LOG)",
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="Open connections per worker, at most half the open-file limit "
            f"(default: {_DEFAULTS.max_connections}; env: REGD_MAX_CONNECTIONS)"
        ),
    ] = None,
    max_connections_per_client: Annotated[
        int | None,
        typer.Option(
            help="Open connections per worker from one client address, 0 for no cap "
            f"(default: {_DEFAULTS.max_connections_per_client}; "
            "env: REGD_MAX_CONNECTIONS_PER_CLIENT)"
        ),
    ] = None,
    header_timeout: Annotated[
        str | None,
        typer.Option(
            help="Time a client has to send a request's head "
            f"(default: {_seconds(_DEFAULTS.header_timeout)}; env: REGD_HEADER_TIMEOUT)"
        ),
    ] = None,
    body_timeout: Annotated[
        str | None,
        typer.Option(
            help="Longest pause between two reads of a request body "
            f"(default: {_seconds(_DEFAULTS.body_timeout)}; env: REGD_BODY_TIMEOUT)"
        ),
    ] = None,
) -> None:
    """Serve the registry API until SIGTERM or SIGINT.

    Every setting can also be given as REGD_<KEY>; regd(8) and the README list them all."""
    from regd.server import serve as run_server

    try:
        conf = cfg.load(
            file=config,
            flags={
                "addr": addr,
                "data_dir": data_dir,
                "database": database,
                "workers": workers,
                "log_level": log_level,
                "log_format": log_format,
                "access_log": access_log,
                "max_connections": max_connections,
                "max_connections_per_client": max_connections_per_client,
                "header_timeout": header_timeout,
                "body_timeout": body_timeout,
            },
        )
        run_server(conf)
    except RegdError as exc:
        typer.echo(f"regd: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"regd: cannot serve: {where}{exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def version() -> None:
    """Print regd's version."""
    typer.echo(__version__)


def use_system_allocator() -> None:
    """Start this process again under the C library's malloc, unless the operator chose
    an allocator (PYTHONMALLOC) already.

    Python's own allocator never hands back a 1 MiB arena while one small object in it
    lives. A burst of connections spreads the few objects that outlive it (worker
    threads, database connections, caches, whatever runs just then) over every arena the
    burst took: 2,000 slow clients left regd at 1.7 times its resident memory with 57 of
    its 102 arenas held by a few hundred live pools. Under malloc, what the burst freed
    goes back to the system (connections.Limits.trim calls malloc_trim), and regd returns
    to about 1.1 times its memory before the burst.
    """
    if "PYTHONMALLOC" in os.environ:
        return
    os.environ["PYTHONMALLOC"] = "malloc"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    except OSError:
        # Some sandboxes refuse a second exec; serving on matters more, and the serving
        # line names the allocator in use.
        del os.environ["PYTHONMALLOC"]


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        # Before anything else is imported or read: the exec starts the process again,
        # and all it did until then is paid twice (2 s of a 4 s start, measured).
        use_system_allocator()
    app(prog_name="regd")
    sys.exit(0)
