"""What the commands over regd's admin API for accounts (user, token, audit) share: which
regd, with which credentials, and one line naming the credentials a refusal asks for."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer

from regctl.runtime import CommandError, default_registry, run_client
from regd.client import AuthError, CredentialStore, RegistryClient
from regd.client.admin import AdminClient
from regd.client.errors import ResponseError, UnsupportedError

T = TypeVar("T")

AdminToken = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        envvar="REGCTL_ADMIN_TOKEN",
        help="regd's admin_token. Without it, the credentials `regctl login` saved for the "
        "registry are used (an account with the admin right).",
        show_default=False,
    ),
]
RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        "-r",
        metavar="HOST[:PORT]",
        help="The regd to manage (default: the local one, or $REGCTL_REGISTRY).",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def host_of(registry: str | None) -> str:
    if not registry:
        return default_registry()
    return registry.split("://", 1)[-1].rstrip("/")


def stored_username(host: str) -> str | None:
    """The account `regctl login` (or docker/podman login) saved for `host`, if any."""
    credentials = CredentialStore().get(host)
    return credentials.username if credentials is not None and credentials.username else None


def run_admin(
    ctx: typer.Context,
    host: str,
    token: str | None,
    work: Callable[[AdminClient], Awaitable[T]],
) -> T:
    """Run `work` against `host`'s admin API. A refusal becomes one line saying which
    credentials the admin API needs; a request the registry rejects (400), its message."""

    async def call(client: RegistryClient) -> T:
        return await work(AdminClient(client, host, token))

    try:
        return run_client(ctx, call)
    except AuthError as exc:
        raise CommandError(_refusal(host, token, exc)) from None
    except UnsupportedError as exc:
        if exc.status == 400 and exc.detail:
            raise CommandError(f"{host}: {exc.detail}") from None
        raise


def _refusal(host: str, token: str | None, exc: ResponseError) -> str:
    remedy = (
        f"pass --admin-token (or set $REGCTL_ADMIN_TOKEN), or `regctl login {host}` "
        "as an account with the admin right"
    )
    if token:
        return f"{host} refused the admin token (HTTP {exc.status}): {remedy}"
    user = stored_username(host)
    if user is not None and exc.status == 403:
        return f"{host}: {user} does not have the admin right (HTTP 403): {remedy}"
    if user is not None:
        return f"{host} refused the saved credentials of {user} (HTTP {exc.status}): {remedy}"
    return f"{host} needs admin credentials (HTTP {exc.status}): {remedy}"


def read_password(from_stdin: bool) -> str:
    """A new password: from standard input, or typed twice at a hidden prompt. Never from
    the command line, where other users see it in the process list and shell history."""
    if from_stdin:
        text = sys.stdin.read()
        # One trailing line end, as `docker login --password-stdin` strips.
        text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            raise CommandError("standard input held no password (--password-stdin)")
        return text
    if not sys.stdin.isatty():
        raise CommandError(
            "no terminal to ask for the password on: pipe it in with --password-stdin"
        )
    password: str = typer.prompt(
        "Password", hide_input=True, confirmation_prompt="Repeat the password"
    )
    return password


def when(seconds: float | None) -> str | None:
    """An epoch time from the admin API as ISO 8601 UTC, to the second."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
