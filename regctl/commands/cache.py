"""cache ls|rm: what a regd's pull-through caches hold, and evicting it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from regctl import output
from regctl.admin import AdminToken, JsonFlag, RegistryOption, host_of, run_admin, when
from regctl.runtime import UsageProblem
from regd.client.admin import AdminClient

app = typer.Typer(
    help="The pull-through caches of a regd (its mirror tables): list and evict what they hold.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

MirrorOption = Annotated[
    str | None,
    typer.Option("--mirror", "-m", help="Only this mirror (its prefix).", show_default=False),
]


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    entry["fetched"] = when(entry.pop("fetched_at", None))
    entry["pulled"] = when(entry.pop("pulled_at", None))
    return entry


@app.command("ls")
def ls(
    ctx: typer.Context,
    mirror: MirrorOption = None,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """List cached manifests and blobs, least recently pulled (first to go) first."""
    host = host_of(registry)

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.cache(mirror)

    held = run_admin(ctx, host, token, work)
    entries = [_row(e) for e in held["entries"]]
    if as_json:
        output.emit_json({"mirrors": held["mirrors"], "entries": entries})
        return
    size = output.human_size
    output.table(
        ["MIRROR", "KIND", "REPOSITORY", "DIGEST", "SIZE", "TAGS", "LAST PULLED"],
        [
            [
                e["mirror"],
                e["kind"],
                e["repository"],
                e["digest"],
                size(e["size"]),
                ",".join(e["tags"]),
                e["pulled"] or "",
            ]
            for e in entries
        ],
    )
    for m in held["mirrors"]:
        if mirror is None or m["prefix"] == mirror:
            limit = f" of {size(m['max_size'])}" if m["max_size"] else " (no limit)"
            output.stdout().print(
                f"mirror {m['prefix']} ({m['upstream']}): {size(m['bytes'])}{limit} in "
                f"{output.count(m['entries'], 'entry', 'entries')}"
            )


@app.command("rm")
def rm(
    ctx: typer.Context,
    mirror: MirrorOption = None,
    repository: Annotated[
        str | None,
        typer.Option("--repository", help="Only this repository.", show_default=False),
    ] = None,
    digest: Annotated[
        str | None,
        typer.Option("--digest", help="Only this manifest or blob.", show_default=False),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Evict everything the caches hold.")
    ] = False,
    registry: RegistryOption = None,
    token: AdminToken = None,
    as_json: JsonFlag = False,
) -> None:
    """Evict cached content now; the next pull fetches it again. Its bytes go at the next
    garbage collection (`regctl gc`)."""
    if not (mirror or repository or digest or everything):
        raise UsageProblem("say what to evict: --mirror, --repository, --digest or --all")
    host = host_of(registry)

    async def work(admin: AdminClient) -> dict[str, Any]:
        return await admin.evict(mirror, repository, digest)

    evicted = [_row(e) for e in run_admin(ctx, host, token, work)["evicted"]]
    if as_json:
        output.emit_json({"evicted": evicted})
        return
    output.stdout().print(
        f"evicted {output.count(len(evicted), 'entry', 'entries')} "
        f"({output.human_size(sum(e['size'] for e in evicted))}) from {host}"
    )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cache")
