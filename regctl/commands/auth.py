"""login and logout: credentials in docker's config.json."""

from __future__ import annotations

import sys
from typing import Annotated

import trio
import typer

from regctl import output
from regctl.runtime import CommandError, UsageProblem, globals_of
from regd.client import AuthError, Credentials, CredentialStore, RegistryClient
from regd.client.auth import normalize_host


class _Only:
    """Answers every host with the credentials being tried."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def get(self, host: str) -> Credentials | None:
        return self._credentials


def _registry_host(text: str) -> str:
    host = normalize_host(text)
    if not host or "/" in text.split("://", 1)[-1].rstrip("/"):
        raise UsageProblem(f"{text!r} is not a registry host (expected HOST[:PORT])")
    return host


def _refusal(exc: AuthError) -> str:
    # A 401 to credentials just sent means they are wrong; registries' own words for it
    # ("authentication required") describe the request, not the cause.
    if exc.status == 401 or not exc.detail:
        return "wrong user name or password"
    return exc.detail


def login(
    ctx: typer.Context,
    registry: Annotated[str, typer.Argument(help="Registry host, e.g. registry.example.com:5000.")],
    username: Annotated[str | None, typer.Option("-u", "--username", help="User name.")] = None,
    password: Annotated[
        str | None,
        typer.Option("-p", "--password", help="Password (prefer --password-stdin)."),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")] = False,
) -> None:
    """Check credentials against a registry and save them for regctl, docker and podman."""
    host = _registry_host(registry)
    if password is not None and password_stdin:
        raise UsageProblem("--password and --password-stdin are mutually exclusive")
    if password_stdin:
        if username is None:
            raise UsageProblem("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    if username is None:
        username = typer.prompt("Username")
    if password is None:
        password = typer.prompt("Password", hide_input=True)
    if not username or not password:
        raise UsageProblem("user name and password must not be empty")
    credentials = Credentials(username, password)
    options = globals_of(ctx)

    async def check() -> None:
        async with RegistryClient(
            credentials=_Only(credentials),
            plain_http=options.plain_http,
            insecure=options.insecure,
            ca_cert=options.ca_cert,
        ) as client:
            try:
                await client.ping(host)
            except AuthError as exc:
                raise CommandError(f"login to {host} failed: {_refusal(exc)}") from None

    trio.run(check)
    store = CredentialStore()
    store.save(host, credentials)
    if not quiet:
        output.stdout().print(f"Login succeeded for {host} (saved in {store.path})")


def logout(
    registry: Annotated[str, typer.Argument(help="Registry host.")],
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing.")] = False,
) -> None:
    """Remove saved credentials for a registry."""
    host = _registry_host(registry)
    removed = CredentialStore().remove(host)
    if not quiet:
        message = f"Removed credentials for {host}" if removed else f"Not logged in to {host}"
        output.stdout().print(message)


def register(app: typer.Typer) -> None:
    app.command()(login)
    app.command()(logout)
