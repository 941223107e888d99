"""What every command shares: global options, the default registry, reference parsing."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio
import typer

from regd.client import RegistryClient
from regd.client.admin import AdminClient
from regd.oci.reference import Reference, ReferenceError_, parse_reference

T = TypeVar("T")

DEFAULT_ADDR = "127.0.0.1:5000"
STATE_FILE = "regctl.json"
DOCKER_TRANSPORT = "docker://"


class CommandError(Exception):
    """A failure outside the registry protocol (daemon control, local files); exit 1."""


class UsageProblem(typer.TyperException):
    """The command line itself is wrong (a malformed reference, clashing options); exit 2."""

    exit_code = 2


@dataclass(slots=True)
class Globals:
    debug: bool = False
    plain_http: bool = False
    insecure: bool = False
    ca_cert: str | None = None
    admin_token: str | None = None


def globals_of(ctx: typer.Context) -> Globals:
    root = ctx.find_root()
    if not isinstance(root.obj, Globals):
        root.obj = Globals()
    return root.obj


def admin_client(ctx: typer.Context, client: RegistryClient, host: str) -> AdminClient:
    """regd's admin API at `host`, with the global --admin-token when one was given."""
    return AdminClient(client, host, globals_of(ctx).admin_token)


def default_data_dir() -> Path:
    env = os.environ.get("REGD_DATA_DIR")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "regd"


def default_registry() -> str:
    """Where a reference without a host points, in the order `regctl --help` states."""
    env = os.environ.get("REGCTL_REGISTRY", "").strip()
    if env:
        return env.split("://", 1)[-1].rstrip("/")
    # background imports this module; the daemon's bookkeeping lives there.
    from regctl.background import running_local

    found = running_local()
    if found is not None:
        return found[1].url.split("://", 1)[-1].rstrip("/")
    return DEFAULT_ADDR


def parse_ref(
    text: str,
    *,
    what: str = "reference",
    allow_registry_only: bool = False,
    tag: bool = True,
    digest: bool = True,
) -> Reference:
    """Parse a reference and fill in the default registry; bad input is a usage error.

    A `docker://` prefix, as skopeo writes references, is accepted and dropped.
    """
    text = text.removeprefix(DOCKER_TRANSPORT)
    try:
        ref = parse_reference(text, require_repository=not allow_registry_only)
    except ReferenceError_ as exc:
        raise UsageProblem(str(exc)) from None
    if not tag and ref.tag:
        raise UsageProblem(f"{what} {text!r} must not name a tag")
    if not digest and ref.digest:
        raise UsageProblem(f"{what} {text!r} must not name a digest")
    if ref.host is None:
        ref = ref.with_host(default_registry())
    return ref


def run_client(ctx: typer.Context, work: Callable[[RegistryClient], Awaitable[T]]) -> T:
    """Run `work` under trio with a client configured from the global options."""
    options = globals_of(ctx)

    async def runner() -> T:
        async with RegistryClient(
            plain_http=options.plain_http, insecure=options.insecure, ca_cert=options.ca_cert
        ) as client:
            return await work(client)

    return trio.run(runner)
