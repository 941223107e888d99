"""token create|ls|rm: machine tokens (secrets for CI jobs, used as a password)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from regctl import output
from regctl.admin import (
    AdminToken,
    JsonFlag,
    RegistryOption,
    host_of,
    run_admin,
    stored_username,
    when,
)
from regctl.commands.storage import parse_duration
from regctl.runtime import CommandError, UsageProblem
from regd.client.admin import AdminClient
from regd.client.errors import NotFoundError

app = typer.Typer(
    help="Manage machine tokens: secrets for CI jobs, used as the password of a login.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _times(token: dict[str, Any]) -> dict[str, Any]:
    for key in ("created", "expires", "last_used"):
        token[key] = when(token.pop(f"{key}_at", None))
    return token


def _state(token: dict[str, Any], now: float, expires_at: float | None) -> str:
    if token["revoked"]:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Option("--name", help="The token's name, e.g. ci.", show_default=False)
    ],
    scopes: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="What it may do, as TYPE:NAME:ACTIONS, e.g. 'repository:team/*:pull,push' "
            "(repeatable; never more than its owner may).",
            show_default=False,
        ),
    ],
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            help="Lifetime, e.g. 90d or 12h (default: until it is removed).",
            show_default=False,
        ),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner",
            help="The account it acts for (default: the account logged in to the registry).",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print only the secret (for scripts).")
    ] = False,
) -> None:
    """Create a machine token and print its secret: this is the only time it is shown."""
    host = host_of(registry)
    lifetime = parse_duration(expires) if expires is not None else None
    if owner is None:
        owner = stored_username(host)
        if owner is None:
            raise UsageProblem(
                f"--owner is needed: no account is logged in to {host} to own the token"
            )
    account = owner

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.create_token(
            owner=account, name=name, scopes=list(scopes), expires_in=lifetime
        )

    try:
        created = _times(run_admin(ctx, host, token, work))
    except NotFoundError:
        raise CommandError(f"user {owner} is not known to {host}") from None
    if as_json:
        output.emit_json(created)
        return
    if quiet:
        typer.echo(created["secret"])
        return
    console = output.stdout()
    expiry = f"expires {created['expires']}" if created["expires"] else "does not expire"
    console.print(
        f"created token {created['name']} (id {created['id']}) for {created['owner']} on "
        f"{host}: {', '.join(created['scopes'])}; {expiry}"
    )
    console.print("Its secret, shown this once (store it now):")
    typer.echo(created["secret"])
    console.print(
        f"Use it as a password: podman login -u {created['name']} --password-stdin {host} "
        "(docker login and skopeo --creds NAME:SECRET alike)"
    )


@app.command("ls")
def ls(
    ctx: typer.Context,
    owner: Annotated[
        str | None,
        typer.Option("--owner", help="Only the tokens of this account.", show_default=False),
    ] = None,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """List machine tokens (never their secrets), revoked ones included."""
    host = host_of(registry)

    async def work(admin: AdminClient) -> list[dict[str, Any]]:
        return await admin.tokens(owner)

    tokens = run_admin(ctx, host, token, work)
    now = time.time()
    for entry in tokens:
        entry["state"] = _state(entry, now, entry.get("expires_at"))
        _times(entry)
    if as_json:
        output.emit_json(tokens)
        return
    output.table(
        ["ID", "NAME", "OWNER", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "STATE"],
        [
            [
                t["id"],
                t["name"],
                t["owner"],
                " ".join(t["scopes"]),
                t["created"] or "-",
                t["expires"] or "never",
                t["last_used"] or "never",
                t["state"],
            ]
            for t in tokens
        ],
    )


@app.command("rm")
def rm(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (token ls).")],
    registry: RegistryOption = None,
    token: AdminToken = None,
) -> None:
    """Revoke a machine token: logins with it fail from now on."""
    host = host_of(registry)

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.revoke_token(token_id)

    try:
        run_admin(ctx, host, token, work)
    except NotFoundError:
        raise CommandError(
            f"token {token_id} is not known to {host} (or already revoked)"
        ) from None
    output.stdout().print(f"revoked token {token_id} on {host}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="token")
