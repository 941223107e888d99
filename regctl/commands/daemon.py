"""start, stop, status, logs: the local regd daemon."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from regctl import output
from regctl.background import (
    LocalDaemon,
    StartOptions,
    follow,
    local_daemon,
    probe,
    remember_started,
)
from regctl.commands.maintenance import describe
from regctl.runtime import (
    DEFAULT_ADDR,
    admin_client,
    default_data_dir,
    default_registry,
    run_client,
)
from regd.client import ClientError, is_loopback

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="regd's data directory (default: $REGD_DATA_DIR, else ~/.local/share/regd)",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietFlag = Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")]


def _daemon(data_dir: Path | None) -> LocalDaemon:
    """The given data directory's daemon, else the local one host-less commands use."""
    return LocalDaemon(data_dir) if data_dir is not None else local_daemon()


def start(
    addr: Annotated[str, typer.Option(help="HOST:PORT for regd to listen on.")] = DEFAULT_ADDR,
    data_dir: DataDir = None,
    config: Annotated[
        Path | None, typer.Option(help="regd configuration file (TOML).", show_default=False)
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(help="Metadata database URL (default: SQLite in the data directory)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Number of server worker processes (default: regd's, one per CPU up to 8)."
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="regd log level (debug, info, warning, error).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for regd to answer.")
    ] = 30.0,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Start regd in the background and wait until it serves /v2/.

    The pid file, log file and the URL are kept in the data directory, and the data
    directory is remembered, so host-less references and stop/status/logs find this regd
    without --data-dir.
    """
    daemon = LocalDaemon(data_dir if data_dir is not None else default_data_dir())
    pid = daemon.running()
    if pid is not None:
        state = daemon.state()
        url = state.url if state else "unknown URL"
        if as_json:
            output.emit_json({"running": True, "started": False, "pid": pid, "url": url})
        elif not quiet:
            output.stdout().print(f"regd is already running (pid {pid}) at {url}")
        return
    stale = daemon.clean_stale()
    if stale is not None and not quiet:
        output.stderr().print(f"removed stale pid file (pid {stale} is not running)")
    state = daemon.start(
        StartOptions(
            addr=addr,
            config=config,
            database=database,
            workers=workers,
            log_level=log_level,
            timeout=timeout,
        )
    )
    remember_started(daemon.data_dir)
    if as_json:
        output.emit_json(
            {
                "running": True,
                "started": True,
                "pid": state.pid,
                "url": state.url,
                "dataDir": str(daemon.data_dir),
                "logFile": str(daemon.log_file),
            }
        )
    elif not quiet:
        output.stdout().print(state.url)


def stop(
    data_dir: DataDir = None,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = 10.0,
    quiet: QuietFlag = False,
) -> None:
    """Stop the background regd: SIGTERM, then SIGKILL if it does not exit in time."""
    daemon = _daemon(data_dir)
    result = daemon.stop(timeout)
    if quiet:
        return
    if result is None:
        output.stdout().print("regd is not running")
        return
    pid, killed = result
    how = f"killed after {timeout:g}s without exiting" if killed else "stopped"
    output.stdout().print(f"regd (pid {pid}) {how}")


def status(
    ctx: typer.Context,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Show whether regd runs, its pid, URL, uptime, repositories and bytes stored.

    Without --data-dir, a regd that regctl did not start (scripts/serve, `regd serve`,
    a container) is found as host-less references find it, by asking its /v2/.
    Exits 0 when regd is running and 1 when it is not.
    """
    daemon = _daemon(data_dir)
    pid = daemon.running()
    state = daemon.state() if pid is not None else None
    foreign: str | None = None
    if pid is None and data_dir is None:
        host = default_registry()
        candidate = ("http://" if is_loopback(host) else "https://") + host
        if probe(candidate):
            foreign = candidate
    url = state.url if state else foreign
    info: dict[str, object] = {
        "running": pid is not None or foreign is not None,
        "startedByRegctl": pid is not None,
        "pid": pid,
        "url": url,
        "uptimeSeconds": round(time.time() - state.started, 1) if state else None,
        "dataDir": str(daemon.data_dir) if pid is not None or foreign is None else None,
        "repositories": None,
        "storedBytes": None,
        "freeBytes": None,
        "volumeBytes": None,
        "freePercent": None,
        "maintenance": None,
        "version": None,
        "serverUptimeSeconds": None,
        "workers": None,
        "storageDriver": None,
        "database": None,
        "collectionRunning": None,
    }
    if url is not None:
        host = url.split("://", 1)[-1]
        with contextlib.suppress(ClientError):
            info["repositories"] = len(run_client(ctx, lambda client: client.catalog(host)))
        # The admin API may refuse (no admin right) or be absent (not regd): then unknown.
        with contextlib.suppress(ClientError):
            server = run_client(ctx, lambda c: admin_client(ctx, c, host).status())
            info["version"] = server.get("version")
            info["serverUptimeSeconds"] = server.get("uptime_seconds")
            info["workers"] = server.get("workers")
            info["storageDriver"] = server.get("storage", {}).get("driver")
            info["database"] = server.get("database")
            info["collectionRunning"] = server.get("collection", {}).get("running")
            volume = server.get("storage", {}).get("volume")
            if volume:
                free, size = int(volume["free_bytes"]), int(volume["size_bytes"])
                info["freeBytes"], info["volumeBytes"] = free, size
                info["freePercent"] = round(100 * free / size, 1) if size else None
        with contextlib.suppress(ClientError):
            info["maintenance"] = run_client(
                ctx, lambda c: admin_client(ctx, c, host).maintenance()
            )
    if pid is not None:
        info["storedBytes"] = daemon.stored_bytes()
    if as_json:
        output.emit_json(info)
    elif not quiet:
        console = output.stdout()
        if pid is None and foreign is None:
            console.print("regd is [bold red]not running[/]")
        elif pid is None:
            console.print(f"regd at {foreign} (not started by regctl)", markup=False)
            if info["repositories"] is not None:
                console.print(f"[bold]{'repositories:':<14}[/]{info['repositories']}")
            if info["freeBytes"] is not None:
                console.print(f"[bold]{'free space:':<14}[/]{_free_space(info)}")
            if info["maintenance"] is not None:
                console.print(f"[bold]{'maintenance:':<14}[/]{_maintenance(info)}")
            for key, value in _server_rows(info):
                console.print(f"[bold]{key + ':':<14}[/]{value}")
        else:
            uptime = info["uptimeSeconds"]
            rows = [
                ("status", "[bold green]running[/]"),
                ("pid", str(pid)),
                ("url", str(info["url"] or "-")),
                ("uptime", _duration(uptime if isinstance(uptime, float) else None)),
                (
                    "repositories",
                    str(info["repositories"] if info["repositories"] is not None else "-"),
                ),
                (
                    "stored",
                    output.human_size(
                        info["storedBytes"] if isinstance(info["storedBytes"], int) else None
                    ),
                ),
                ("free space", _free_space(info)),
                ("maintenance", _maintenance(info)),
                ("data dir", str(daemon.data_dir)),
                *_server_rows(info),
            ]
            for key, value in rows:
                console.print(f"[bold]{key + ':':<14}[/]{value}")
    if not info["running"]:
        raise typer.Exit(1)


# Below this share of the volume free, `status` warns: pushes fail when it runs out.
LOW_FREE_PERCENT = 10.0


def _free_space(info: dict[str, object]) -> str:
    """`X of Y (Z %)`, in yellow with a warning when little is left; markup for rich."""
    free, size, percent = info["freeBytes"], info["volumeBytes"], info["freePercent"]
    if not isinstance(free, int) or not isinstance(size, int) or not isinstance(percent, float):
        return "-"
    text = f"{output.human_size(free)} of {output.human_size(size)} ({percent:g} %)"
    if percent < LOW_FREE_PERCENT:
        return f"[bold yellow]{text}: low, pushes fail when it runs out[/]"
    return text


def _maintenance(info: dict[str, object]) -> str:
    """Maintenance mode for `status`, in bold yellow while writes are refused; markup."""
    state = info["maintenance"]
    if not isinstance(state, dict):
        return "-"
    text = escape(describe(state))
    return f"[bold yellow]{text} (writes refused)[/]" if state.get("enabled") else text


def _server_rows(info: dict[str, object]) -> list[tuple[str, str]]:
    """What regd says of itself (its admin status), when it said anything."""
    if info["version"] is None:
        return []
    uptime = info["serverUptimeSeconds"]
    running = info["collectionRunning"]
    return [
        ("version", str(info["version"])),
        ("serving for", _duration(float(uptime) if isinstance(uptime, int | float) else None)),
        ("workers", str(info["workers"] or "-")),
        ("storage", str(info["storageDriver"] or "-")),
        ("database", str(info["database"] or "-")),
        ("collection", "[bold yellow]running[/]" if running else "idle"),
    ]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def logs(
    data_dir: DataDir = None,
    follow_log: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing new lines until interrupted.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("-n", "--tail", min=0, help="Only the last N lines.")
    ] = None,
) -> None:
    """Print regd's log file."""
    daemon = _daemon(data_dir)
    try:
        follow(daemon.log_file, tail=tail, forever=follow_log)
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    app.command()(start)
    app.command()(stop)
    app.command()(status)
    app.command()(logs)
