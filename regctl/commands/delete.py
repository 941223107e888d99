"""tag add, tag rm and rm: retagging, deleting tags and manifests."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from regctl import output
from regctl.commands.listing import describe_tags
from regctl.runtime import CommandError, UsageProblem, parse_ref, run_client
from regd.client import NotFoundError, RegistryClient, UnsupportedError
from regd.oci.digest import Digest
from regd.oci.names import is_valid_tag
from regd.oci.reference import Reference

tag_app = typer.Typer(help="Manage tags.", no_args_is_help=True, rich_markup_mode="rich")

DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietFlag = Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")]


def _report(rows: list[dict[str, Any]], *, dry_run: bool, as_json: bool, quiet: bool) -> None:
    if as_json:
        output.emit_json({"dryRun": dry_run, "deleted": rows})
        return
    if quiet:
        return
    verb = "would delete" if dry_run else "deleted"
    console = output.stdout()
    for row in rows:
        console.print(f"{verb} {row['reference']} ({row['digest']})")
        for tag in row.get("tags", ()):
            console.print(f"  {verb} tag {tag}")


@tag_app.command("add")
def tag_add(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="[REGISTRY/]REPO[:TAG]\\[@DIGEST] to tag.", show_default=False)
    ],
    tags: Annotated[
        list[str], typer.Argument(help="New tag names, in the same repository.", show_default=False)
    ],
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Add tags to a manifest without moving a blob: its exact bytes are pushed again
    under each new tag, so the digest is unchanged."""
    src = parse_ref(source, what="source")
    for tag in tags:
        if not is_valid_tag(tag):
            raise UsageProblem(f"invalid tag {tag!r}: expected [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}")

    async def work(client: RegistryClient) -> list[dict[str, Any]]:
        fetched = await client.get_manifest(src)
        rows = []
        for tag in tags:
            target = Reference(src.host, src.repository, tag)
            # The subject's referrers already list this manifest, whatever its tags.
            await client.put_manifest(
                target, fetched.data, fetched.media_type, maintain_referrers_tag=False
            )
            rows.append({"reference": str(target), "tag": tag, "digest": str(fetched.digest)})
        return rows

    rows = run_client(ctx, work)
    if as_json:
        output.emit_json({"source": str(src), "tagged": rows})
    elif not quiet:
        for row in rows:
            output.stdout().print(f"tagged {row['reference']} ({row['digest']})", markup=False)


@tag_app.command("rm")
def tag_rm(
    ctx: typer.Context,
    references: Annotated[
        list[str], typer.Argument(help="[REGISTRY/]REPO:TAG, one or more.", show_default=False)
    ],
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Delete tags; the manifests they point at stay.

    Some registries (Distribution) cannot delete a tag on its own; then delete the
    manifest with `regctl rm REPO@DIGEST`, which removes every tag on it.
    """
    refs = [parse_ref(text, what="tag reference", digest=False) for text in references]
    for text, ref in zip(references, refs, strict=True):
        if not ref.tag:
            raise UsageProblem(f"tag reference {text!r} needs :TAG")

    async def work(client: RegistryClient) -> list[dict[str, Any]]:
        rows = []
        for ref in refs:
            info = await client.head_manifest(ref)
            if info is None:
                await client.get_manifest(ref)
                raise CommandError(f"tag {ref.tag!r} not found in {ref.host}/{ref.repository}")
            if not dry_run:
                try:
                    await client.delete_manifest(ref)
                except UnsupportedError as exc:
                    raise CommandError(
                        f"{exc}; delete the manifest instead with "
                        f"'regctl rm {ref.host}/{ref.repository}@{info.digest}' "
                        "(removes every tag on it)"
                    ) from exc
            rows.append({"reference": str(ref), "tag": ref.tag, "digest": str(info.digest)})
        return rows

    rows = run_client(ctx, work)
    _report(rows, dry_run=dry_run, as_json=as_json, quiet=quiet)


async def _tags_on(client: RegistryClient, ref: Reference, digest: Digest) -> list[str]:
    repository = Reference(ref.host, ref.repository)
    try:
        tags = await client.tags(repository)
    except NotFoundError:
        return []
    heads = await describe_tags(client, repository, tags)
    return sorted(tag for tag, head in heads.items() if head is not None and head.digest == digest)


def rm(
    ctx: typer.Context,
    references: Annotated[
        list[str], typer.Argument(help="[REGISTRY/]REPO@DIGEST, one or more.", show_default=False)
    ],
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Delete manifests by digest, and with them every tag pointing at them."""
    refs = [parse_ref(text, what="manifest reference") for text in references]
    for text, ref in zip(references, refs, strict=True):
        if ref.digest is None:
            raise UsageProblem(
                f"rm needs REPO@DIGEST, got {text!r}; find it with 'regctl digest {text}', "
                "or remove only the tag with 'regctl tag rm'"
            )

    async def work(client: RegistryClient) -> list[dict[str, Any]]:
        rows = []
        for ref in refs:
            by_digest = Reference(ref.host, ref.repository, None, ref.digest)
            info = await client.head_manifest(by_digest)
            if info is None:
                # GET yields the registry's own 404 error, code and all.
                await client.get_manifest(by_digest)
                raise CommandError(f"{by_digest} not found")
            row: dict[str, Any] = {
                "reference": str(by_digest),
                "digest": str(ref.digest),
                "mediaType": info.media_type,
                "size": info.size,
            }
            if dry_run:
                # What the deletion would take with it: every tag on this manifest.
                row["tags"] = await _tags_on(client, ref, info.digest)
            else:
                await client.delete_manifest(by_digest)
            rows.append(row)
        return rows

    rows = run_client(ctx, work)
    _report(rows, dry_run=dry_run, as_json=as_json, quiet=quiet)


def register(root: typer.Typer) -> None:
    root.add_typer(tag_app, name="tag")
    root.command()(rm)
