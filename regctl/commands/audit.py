"""audit: who pushed, tagged, deleted, or failed to log in; when and from where."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from regctl import output
from regctl.admin import AdminToken, JsonFlag, RegistryOption, host_of, run_admin, when
from regctl.commands.storage import parse_duration
from regctl.runtime import UsageProblem
from regd.client.admin import AdminClient
from regd.oci.reference import ReferenceError_, parse_reference


def _since(text: str) -> float | str:
    """An age (`24h`, passed on for regd to count back from its own clock) or an ISO 8601
    time (epoch seconds; without a zone it is UTC)."""
    try:
        parse_duration(text)
    except UsageProblem:
        pass
    else:
        return text.strip()
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageProblem(
            f"--since {text!r} is neither an age (e.g. 90m, 24h, 7d) nor an ISO 8601 time "
            "(e.g. 2025-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def audit(
    ctx: typer.Context,
    repository: Annotated[
        str | None,
        typer.Argument(
            metavar="[[HOST[:PORT]/]REPO]",
            help="Only the records of this repository (default: all).",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only records this recent: an age (24h, 7d) or an ISO 8601 time.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10_000, help="At most this many records.")
    ] = 100,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the audit trail, newest first: pushes, tags, deletions and failed logins, with
    who did them, when (UTC) and from which address."""
    host = host_of(registry)
    name: str | None = None
    if repository:
        try:
            ref = parse_reference(repository)
        except ReferenceError_ as exc:
            raise UsageProblem(str(exc)) from None
        if ref.tag or ref.digest:
            raise UsageProblem(f"repository {repository!r} must not name a tag or digest")
        name = ref.repository
        host = ref.host or host
    after = _since(since) if since is not None else None

    async def work(admin: AdminClient) -> list[dict[str, Any]]:
        return await admin.audit(repository=name, since=after, limit=limit)

    records = run_admin(ctx, host, token, work)
    for record in records:
        record["time"] = when(record.pop("ts", None))
    if as_json:
        output.emit_json(records)
        return
    output.table(
        ["TIME", "ACTOR", "ACTION", "REPOSITORY", "REFERENCE", "FROM", "OUTCOME"],
        [
            [
                r["time"] or "-",
                r["actor"] or "-",
                r["action"],
                r["repository"] or "-",
                r["reference"] or "-",
                r["remote_addr"] or "-",
                r["outcome"],
            ]
            for r in records
        ],
    )


def register(app: typer.Typer) -> None:
    app.command()(audit)
