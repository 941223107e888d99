"""manifest get: a manifest's JSON, pretty or byte for byte."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from regctl.commands.inspect import PlatformOption, pick_platform, platform_option
from regctl.runtime import parse_ref, run_client
from regd.client import FetchedManifest, RegistryClient

app = typer.Typer(help="Read manifests.", no_args_is_help=True, rich_markup_mode="rich")


@app.command("get")
def get(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="[REGISTRY/]REPO[:TAG]\\[@DIGEST]")],
    platform: PlatformOption = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Write the exact bytes the registry stores.")
    ] = False,
) -> None:
    """Print a manifest (pretty JSON, or the exact stored bytes with --raw)."""
    ref = parse_ref(reference)
    wanted = platform_option(platform)

    async def work(client: RegistryClient) -> FetchedManifest:
        fetched = await client.get_manifest(ref)
        if wanted is not None:
            _, fetched = await pick_platform(client, ref, fetched, wanted)
        return fetched

    fetched = run_client(ctx, work)
    if raw:
        sys.stdout.buffer.write(fetched.data)
        sys.stdout.buffer.flush()
        return
    try:
        text = json.dumps(fetched.json(), indent=2)
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = fetched.data.decode(errors="replace")
    sys.stdout.write(text + "\n")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="manifest")
