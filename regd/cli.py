"""`regd`: the daemon's command line."""

from __future__ import annotations

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
)


@app.command()
def serve(
    addr: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default: 127.0.0.1:5000)")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where blobs and the SQLite database live (default: $REGD_DATA_DIR "
            "or ~/.local/share/regd)"
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A TOML configuration file")
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(help="sqlite:///PATH or postgresql://... (default: SQLite in the data dir)"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes sharing the data dir (default: 1)")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error (default: info)")
    ] = None,
    access_log: Annotated[
        bool | None, typer.Option("--access-log/--no-access-log", help="Log every request")
    ] = None,
) -> None:
    """Serve the registry API until SIGTERM or SIGINT."""
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
                "access_log": access_log,
            },
        )
        run_server(conf)
    except RegdError as exc:
        typer.echo(f"regd: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"regd: cannot serve: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print regd's version."""
    typer.echo(__version__)


def main() -> None:
    app(prog_name="regd")
    sys.exit(0)
