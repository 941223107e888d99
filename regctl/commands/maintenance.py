"""maintenance: switch a regd's maintenance mode (writes refused, pulls go on) on or off."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from regctl import output
from regctl.admin import AdminToken, JsonFlag, RegistryOption, host_of, run_admin, when
from regctl.runtime import UsageProblem, globals_of
from regd.client.admin import AdminClient


class Switch(StrEnum):
    on = "on"
    off = "off"


def describe(state: dict[str, Any]) -> str:
    """One line for people: `on since ...: message` or `off`."""
    if not state.get("enabled"):
        return "off"
    since = when(state.get("since"))
    text = "on" + (f" since {since}" if since else "")
    message = state.get("message")
    return text + (f": {message}" if message else "")


def maintenance(
    ctx: typer.Context,
    switch: Annotated[
        Switch | None,
        typer.Argument(help="on or off (default: show the current state)", show_default=False),
    ] = None,
    message: Annotated[
        str | None,
        typer.Option(
            "--message",
            "-m",
            help="With `on`: why, repeated to every client whose write is refused.",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """Maintenance mode: while on, every replica of the regd refuses pushes, deletions and
    uploads (405, as Distribution's read-only mode) and keeps serving pulls; garbage
    collection still runs."""
    if message is not None and switch is not Switch.on:
        raise UsageProblem("--message goes with `maintenance on`")
    host = host_of(registry)

    async def work(admin: AdminClient) -> dict[str, Any]:
        if switch is None:
            return await admin.maintenance()
        return await admin.set_maintenance(switch is Switch.on, message)

    # The global --admin-token (that of gc and du) serves here too.
    state = run_admin(ctx, host, token or globals_of(ctx).admin_token, work)
    if as_json:
        output.emit_json(state)
        return
    output.stdout().print(f"maintenance mode on {host}: {describe(state)}", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(maintenance)
