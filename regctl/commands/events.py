"""events [retry|drop]: regd's webhook queues, and what an operator may do about them."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from regctl import output
from regctl.admin import AdminToken, JsonFlag, RegistryOption, host_of, run_admin, when
from regd.client.admin import AdminClient

app = typer.Typer(
    help="Show regd's event (webhook) queues; retry or drop what a failing endpoint holds.",
    invoke_without_command=True,
    rich_markup_mode="rich",
)

EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint", "-e", metavar="NAME", help="Only this endpoint.", show_default=False
    ),
]


def _times(doc: dict[str, Any]) -> dict[str, Any]:
    for key in ("oldest_at", "last_error_at", "last_delivered_at"):
        doc[key] = when(doc.get(key))
    due = doc.get("next_attempt_at")
    doc["next_attempt_at"] = when(due) if due else None
    return doc


@app.callback()
def events(
    ctx: typer.Context,
    endpoint: EndpointOption = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Only endpoints whose last delivery failed.")
    ] = False,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """Show each endpoint's queue: events waiting, failures in a row, the last error and
    the last delivery (times in UTC)."""
    if ctx.invoked_subcommand is not None:
        return
    host = host_of(registry)

    async def work(admin: AdminClient) -> list[dict[str, Any]]:
        return await admin.events(endpoint=endpoint, failed=failed)

    queues = [_times(doc) for doc in run_admin(ctx, host, token, work)]
    if as_json:
        output.emit_json(queues)
        return
    output.table(
        ["ENDPOINT", "WAITING", "OLDEST", "FAILURES", "LAST DELIVERED", "LAST ERROR"],
        [
            [
                q["name"] + ("" if q["configured"] else " (not configured)"),
                str(q["pending"]),
                q["oldest_at"] or "-",
                str(q["failures"]),
                q["last_delivered_at"] or "-",
                f"{q['last_error_at']} {q['last_error']}" if q["failures"] else "-",
            ]
            for q in queues
        ],
    )


@app.command("retry")
def retry(
    ctx: typer.Context,
    endpoint: EndpointOption = None,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """Make failing endpoints (or the one named) try again now, not after their backoff."""
    host = host_of(registry)

    async def work(admin: AdminClient) -> list[str]:
        return await admin.retry_events(endpoint)

    names = run_admin(ctx, host, token, work)
    if as_json:
        output.emit_json({"retried": names})
        return
    output.stdout().print(
        f"retrying {', '.join(names)}" if names else "no endpoint was waiting to retry"
    )


@app.command("drop")
def drop(
    ctx: typer.Context,
    endpoint: Annotated[
        str,
        typer.Option("--endpoint", "-e", metavar="NAME", help="The endpoint.", show_default=False),
    ],
    through: Annotated[
        int | None,
        typer.Option(
            "--through",
            min=0,
            metavar="SEQ",
            help="Only events up to this sequence number (`regctl events --json` shows the "
            "oldest waiting as oldest_seq); default: all.",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """Give up on the events waiting for an endpoint: they are never delivered to it."""
    host = host_of(registry)

    async def work(admin: AdminClient) -> int:
        return await admin.drop_events(endpoint, through=through)

    dropped = run_admin(ctx, host, token, work)
    if as_json:
        output.emit_json({"endpoint": endpoint, "dropped": dropped})
        return
    output.stdout().print(f"dropped {output.count(dropped, 'event')} waiting for {endpoint}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="events")
