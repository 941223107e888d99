"""blob get: stream a blob to a file or standard output, digest verified."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import trio
import typer

from regctl import output
from regctl.runtime import UsageProblem, parse_ref, run_client
from regd.client import RegistryClient

app = typer.Typer(help="Read blobs.", no_args_is_help=True, rich_markup_mode="rich")


@app.command("get")
def get(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="[REGISTRY/]REPO@DIGEST")],
    out: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write to FILE instead of standard output."),
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")] = False,
) -> None:
    """Download a blob, streamed and checked against its digest.

    With -o, the file appears only once the digest is verified.
    """
    ref = parse_ref(reference, what="blob reference", tag=False)
    if ref.digest is None:
        raise UsageProblem(f"blob reference {reference!r} needs @DIGEST")
    if out is None and sys.stdout.isatty():
        raise UsageProblem("refusing to write a blob to a terminal; use -o FILE")

    async def to_file(client: RegistryClient, target: Path) -> int:
        partial = target.with_name(f".{target.name}.partial")
        written = 0
        try:
            async with (
                client.open_blob(ref) as stream,
                await trio.open_file(partial, "wb") as handle,
            ):
                async for chunk in stream.chunks():
                    await handle.write(chunk)
                    written += len(chunk)
            os.replace(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return written

    async def to_stdout(client: RegistryClient) -> int:
        written = 0
        sink = sys.stdout.buffer
        async with client.open_blob(ref) as stream:
            async for chunk in stream.chunks():
                sink.write(chunk)
                written += len(chunk)
        sink.flush()
        return written

    if out is None:
        run_client(ctx, to_stdout)
        return
    target = out
    written = run_client(ctx, lambda client: to_file(client, target))
    if not quiet:
        output.stderr().print(f"{ref.digest}: {output.human_size(written)} written to {out}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="blob")
