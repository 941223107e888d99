"""user add|ls|passwd|groups|disable|enable|rm: regd's accounts, through its admin API."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from regctl import output
from regctl.admin import (
    AdminToken,
    JsonFlag,
    RegistryOption,
    host_of,
    read_password,
    run_admin,
    when,
)
from regctl.runtime import CommandError, UsageProblem
from regd.client.admin import AdminClient
from regd.client.errors import NotFoundError, ResponseError

app = typer.Typer(
    help="Manage regd's accounts (people who log in with a password).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

NameArg = Annotated[str, typer.Argument(help="Account name.", show_default=False)]
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from standard input (otherwise it is asked for twice).",
    ),
]


def _unknown(name: str, host: str) -> CommandError:
    return CommandError(f"user {name} is not known to {host}")


@app.command("add")
def add(
    ctx: typer.Context,
    name: NameArg,
    groups: Annotated[
        list[str] | None,
        typer.Option(
            "--group", "-g", help="A group to put the account in (repeatable).", show_default=False
        ),
    ] = None,
    password_stdin: PasswordStdin = False,
    registry: RegistryOption = None,
    token: AdminToken = None,
) -> None:
    """Add an account. Its password is asked for twice, or read with --password-stdin."""
    host = host_of(registry)
    password = read_password(password_stdin)

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.add_user(name, password, list(groups or []))

    try:
        answer = run_admin(ctx, host, token, work)
    except ResponseError as exc:
        if exc.status == 409:
            raise CommandError(f"user {name} already exists on {host}") from None
        raise
    console = output.stdout()
    in_groups = f" in {', '.join(answer['groups'])}" if answer["groups"] else ""
    console.print(f"added user {name}{in_groups} to {host}")
    if answer.get("restart"):
        console.print(
            f"{host} serves without authentication now; accounts take effect when it next "
            "starts (regctl stop && regctl start), and from then on every client must log in"
        )


@app.command("ls")
def ls(
    ctx: typer.Context,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """List accounts: those stored in regd's database and those of its htpasswd file."""
    host = host_of(registry)

    async def work(admin: AdminClient) -> list[dict[str, Any]]:
        return await admin.users()

    users = run_admin(ctx, host, token, work)
    for user in users:
        user["created"] = when(user.pop("created_at", None))
    if as_json:
        output.emit_json(users)
        return
    output.table(
        ["NAME", "GROUPS", "SOURCE", "CREATED", "STATE"],
        [
            [
                user["name"],
                ",".join(user["groups"]) or "-",
                user["source"],
                user["created"] or "-",
                "disabled" if user.get("disabled") else "active",
            ]
            for user in users
        ],
    )


@app.command("passwd")
def passwd(
    ctx: typer.Context,
    name: NameArg,
    password_stdin: PasswordStdin = False,
    registry: RegistryOption = None,
    token: AdminToken = None,
) -> None:
    """Set an account's password; its logins remembered by regd end now."""
    host = host_of(registry)
    password = read_password(password_stdin)

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.set_password(name, password)

    try:
        run_admin(ctx, host, token, work)
    except NotFoundError:
        raise _unknown(name, host) from None
    output.stdout().print(f"changed the password of {name} on {host}")


@app.command("groups")
def groups(
    ctx: typer.Context,
    name: NameArg,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="The account's groups, replacing the ones it has (none: no group).",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOption = None,
    token: AdminToken = None,
) -> None:
    """Set the groups an account is in (the `admin` group holds the admin right under the
    default access rules)."""
    host = host_of(registry)
    wanted = list(names or [])

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.set_groups(name, wanted)

    try:
        answer = run_admin(ctx, host, token, work)
    except NotFoundError:
        raise _unknown(name, host) from None
    now = ", ".join(answer["groups"]) or "no group"
    output.stdout().print(f"{name} on {host} is in {now}")


def _set_disabled(
    ctx: typer.Context, name: str, registry: str | None, token: str | None, disabled: bool
) -> str:
    host = host_of(registry)

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.set_disabled(name, disabled)

    try:
        run_admin(ctx, host, token, work)
    except NotFoundError:
        raise _unknown(name, host) from None
    return host


@app.command("disable")
def disable(
    ctx: typer.Context,
    name: NameArg,
    registry: RegistryOption = None,
    token: AdminToken = None,
) -> None:
    """Disable an account: its password, its machine tokens and the access tokens it holds
    are refused, by every regd sharing the database within about 2 s. It stays, with its
    groups and machine tokens, until enabled again or removed."""
    host = _set_disabled(ctx, name, registry, token, True)
    output.stdout().print(f"disabled user {name} on {host}")


@app.command("enable")
def enable(
    ctx: typer.Context,
    name: NameArg,
    registry: RegistryOption = None,
    token: AdminToken = None,
) -> None:
    """Enable a disabled account again: its password and machine tokens log in once more.
    Access tokens issued before it was disabled stay refused; clients log in anew."""
    host = _set_disabled(ctx, name, registry, token, False)
    output.stdout().print(f"enabled user {name} on {host}")


@app.command("rm")
def rm(
    ctx: typer.Context,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    registry: RegistryOption = None,
    token: AdminToken = None,
) -> None:
    """Remove an account; it can no longer log in. Its machine tokens go with it."""
    host = host_of(registry)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageProblem(f"removing user {name} needs --yes when no terminal can confirm")
        typer.confirm(f"Remove user {name} from {host}?", abort=True)

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.remove_user(name)

    try:
        run_admin(ctx, host, token, work)
    except NotFoundError:
        raise _unknown(name, host) from None
    output.stdout().print(f"removed user {name} from {host}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="user")
