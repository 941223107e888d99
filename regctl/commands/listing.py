"""ls: repositories of a registry, or tags of a repository."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import trio
import typer

from regctl import output
from regctl.runtime import UsageProblem, default_registry, parse_ref, run_client
from regd.client import ManifestHead, RegistryClient
from regd.client.tasks import task_group
from regd.oci.reference import Reference

# Enough HEADs in flight to hide latency, few enough to be polite to a remote registry.
_HEAD_CONCURRENCY = 8


class SortKey(enum.StrEnum):
    name = "name"
    time = "time"


async def describe_tags(
    client: RegistryClient, repo: Reference, tags: list[str]
) -> dict[str, ManifestHead | None]:
    found: dict[str, ManifestHead | None] = {}
    limiter = trio.CapacityLimiter(_HEAD_CONCURRENCY)

    async def one(tag: str) -> None:
        async with limiter:
            found[tag] = await client.head_manifest(Reference(repo.host, repo.repository, tag))

    async with task_group() as nursery:
        for tag in tags:
            nursery.start_soon(one, tag)
    return found


def _sort_tags(rows: list[dict[str, Any]], key: SortKey) -> list[dict[str, Any]]:
    rows = sorted(rows, key=lambda r: r["tag"])
    if key is SortKey.time:
        # Newest first; tags the registry gives no time for go last, by name.
        rows.sort(key=lambda r: (r["pushed"] is None, _neg_time(r["pushed"])))
    return rows


def _neg_time(value: str | None) -> float:
    return -datetime.fromisoformat(value).timestamp() if value else 0.0


def ls(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(
            help="REGISTRY to list its repositories, or [REGISTRY/]REPO to list its tags.",
            show_default=False,
        ),
    ] = None,
    sort: Annotated[SortKey, typer.Option("--sort", help="Order of the listing.")] = SortKey.name,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print names only.")] = False,
) -> None:
    """List repositories of a registry, or tags of a repository with digest, type and size."""
    if target is None:
        host = default_registry()
        ref = Reference(host, "")
    else:
        ref = parse_ref(target, allow_registry_only=True)
        if ref.tag or ref.digest:
            raise UsageProblem(f"ls takes a registry or a repository, not {target!r}")
    host = ref.host or default_registry()

    if not ref.repository:
        if sort is SortKey.time:
            # The catalog carries no times; pretending to sort by them would mislead.
            raise UsageProblem(
                "--sort time orders a repository's tags; repositories are listed by name"
            )
        repositories = run_client(ctx, lambda client: client.catalog(host))
        repositories = sorted(repositories)
        if as_json:
            output.emit_json({"registry": host, "repositories": repositories})
        elif quiet:
            for name in repositories:
                output.stdout().print(name)
        else:
            output.table(["REPOSITORY"], [[name] for name in repositories])
        return

    async def work(client: RegistryClient) -> tuple[list[str], dict[str, ManifestHead | None]]:
        tags = await client.tags(ref)
        return tags, await describe_tags(client, ref, tags)

    tags, infos = run_client(ctx, work)
    rows: list[dict[str, Any]] = []
    for tag in tags:
        info = infos.get(tag)
        rows.append(
            {
                "tag": tag,
                "digest": str(info.digest) if info else None,
                "mediaType": info.media_type if info else None,
                "size": info.size if info else None,
                "pushed": output.iso(info.last_modified) if info else None,
            }
        )
    rows = _sort_tags(rows, sort)
    if as_json:
        output.emit_json({"registry": host, "repository": ref.repository, "tags": rows})
    elif quiet:
        for row in rows:
            output.stdout().print(row["tag"])
    else:
        output.table(
            ["TAG", "DIGEST", "TYPE", "SIZE", "PUSHED"],
            [
                [
                    row["tag"],
                    row["digest"] or "-",
                    output.short_type(row["mediaType"] or "-"),
                    output.human_size(row["size"]),
                    row["pushed"] or "-",
                ]
                for row in rows
            ],
        )


def register(app: typer.Typer) -> None:
    app.command()(ls)
