"""What every command shares: global options, the default registry, reference parsing."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio
import typer

from regd.client import RegistryClient
from regd.oci.reference import Reference, ReferenceError_, parse_reference

T = TypeVar("T")

DEFAULT_ADDR = "127.0.0.1:5000"
STATE_FILE = "regctl.json"


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


def globals_of(ctx: typer.Context) -> Globals:
    root = ctx.find_root()
    if not isinstance(root.obj, Globals):
        root.obj = Globals()
    return root.obj


def default_data_dir() -> Path:
    env = os.environ.get("REGD_DATA_DIR")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "regd"


def default_registry() -> str:
    """Where a reference without a host points: $REGCTL_REGISTRY, else the local regd."""
    env = os.environ.get("REGCTL_REGISTRY", "").strip()
    if env:
        return env.split("://", 1)[-1].rstrip("/")
    try:
        state = json.loads((default_data_dir() / STATE_FILE).read_text())
        url = state.get("url") if isinstance(state, dict) else None
        if isinstance(url, str) and url:
            return url.split("://", 1)[-1].rstrip("/")
    except (OSError, json.JSONDecodeError):
        pass
    return DEFAULT_ADDR


def parse_ref(
    text: str,
    *,
    what: str = "reference",
    allow_registry_only: bool = False,
    tag: bool = True,
    digest: bool = True,
) -> Reference:
    """Parse a reference and fill in the default registry; bad input is a usage error."""
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
