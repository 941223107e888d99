"""gc, du, prune, rm-repo and verify: storage lifecycle of a regd, through its admin API."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from regctl import output
from regctl.runtime import (
    CommandError,
    UsageProblem,
    admin_client,
    default_registry,
    parse_ref,
    run_client,
)
from regd.client import RegistryClient
from regd.durations import duration_seconds

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietFlag = Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")]
RegistryArg = Annotated[
    str | None,
    typer.Argument(help="HOST[:PORT] of a regd (default: the local one)", show_default=False),
]


def parse_duration(text: str) -> float:
    try:
        return duration_seconds(text)
    except ValueError:
        raise UsageProblem(
            f"invalid duration {text!r}: use e.g. 90s, 15m, 12h, 30d or 2w"
        ) from None


def _host(registry: str | None) -> str:
    if not registry:
        return default_registry()
    return registry.split("://", 1)[-1].rstrip("/")


def _held_note(held: Any, grace: Any) -> str | None:
    """Garbage the grace period still protects: how much, and how to collect it now."""
    if not isinstance(held, int) or held <= 0:
        return None
    period = f"the {_period(grace)} grace period" if isinstance(grace, int | float) else "grace"
    return (
        f"{output.human_size(held)} of unreferenced blobs is held back by {period} "
        "(pushed or linked too recently); `regctl gc --grace 0` collects it now"
    )


def _period(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def gc(
    ctx: typer.Context,
    registry: RegistryArg = None,
    dry_run: DryRun = False,
    delete_untagged: Annotated[
        bool,
        typer.Option(
            "--delete-untagged",
            help="Also delete manifests no tag reaches (platform manifests of a tagged "
            "index and referrers of kept manifests stay).",
        ),
    ] = False,
    delete_orphan_referrers: Annotated[
        bool,
        typer.Option(
            "--delete-orphan-referrers", help="Also delete referrers whose subject is gone."
        ),
    ] = False,
    grace: Annotated[
        str | None,
        typer.Option(
            help="Spare anything pushed within this long (default: regd's gc_grace, 1h)",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Collect garbage while regd keeps serving: unreferenced blobs, stale uploads and,
    on request, untagged manifests."""
    grace_seconds = parse_duration(grace) if grace is not None else None
    host = _host(registry)

    async def work(client: RegistryClient) -> dict[str, Any]:
        return await admin_client(ctx, client, host).collect(
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            delete_orphan_referrers=delete_orphan_referrers,
            grace_seconds=grace_seconds,
        )

    plan = run_client(ctx, work)
    if as_json:
        output.emit_json(plan)
        return
    if quiet:
        return
    totals = plan["totals"]
    verb = "would free" if plan["dry_run"] else "freed"
    rows = [
        [
            name,
            str(entry["manifests"]),
            str(entry["blobs"]),
            output.human_size(entry["manifest_bytes"] + entry["blob_bytes"]),
        ]
        for name, entry in plan["repositories"].items()
    ]
    if rows:
        output.table(["REPOSITORY", "MANIFESTS", "BLOBS", "BYTES"], rows)
    output.stdout().print(
        f"{verb} {output.human_size(totals['bytes_freed'])}: "
        f"{output.count(totals['manifests'], 'manifest')}, "
        f"{output.count(totals['blobs'], 'blob')}, "
        f"{output.count(totals['uploads'], 'stale upload')} "
        f"({plan['seconds']:.2f} s)"
    )
    held = _held_note(totals.get("held_bytes"), plan["policy"]["grace_seconds"])
    if held:
        output.stdout().print(held)


def du(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(
            help="[HOST[:PORT]/]REPO for one repository's tags, or HOST[:PORT] "
            "(default: the local regd)",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Disk usage: per repository and tag, the total, the bytes unique to it (what deleting
    it would free) and the bytes shared with others; then each storage quota (those that
    apply to REPO when one is given) with its usage against its limit."""
    repository: str | None = None
    host = default_registry()
    if target:
        ref = parse_ref(
            target, what="repository", allow_registry_only=True, tag=False, digest=False
        )
        host = ref.host or host
        repository = ref.repository or None

    async def work(client: RegistryClient) -> dict[str, Any]:
        return await admin_client(ctx, client, host).usage(repository)

    usage = run_client(ctx, work)
    if repository is not None and not any(r["name"] == repository for r in usage["repositories"]):
        # The admin API answers an unknown name with nothing rather than a 404.
        raise CommandError(f"repository {repository} is not known to {host}")
    if as_json:
        output.emit_json(usage)
        return
    size = output.human_size
    if repository is None:
        output.table(
            ["REPOSITORY", "SIZE", "UNIQUE", "SHARED", "TAGS", "MANIFESTS"],
            [
                [
                    r["name"],
                    size(r["size"]),
                    size(r["unique"]),
                    size(r["shared"]),
                    str(len(r["tags"])),
                    str(r["manifests"]),
                ]
                for r in usage["repositories"]
            ],
        )
    else:
        for r in usage["repositories"]:
            output.table(
                ["TAG", "SIZE", "UNIQUE", "SHARED", "DIGEST"],
                [
                    [t["tag"], size(t["size"]), size(t["unique"]), size(t["shared"]), t["digest"]]
                    for t in r["tags"]
                ],
                title=f"{r['name']}: {size(r['size'])}, {size(r['unique'])} unique",
            )
    quotas = usage.get("quotas") or []
    if quotas:
        output.table(
            ["QUOTA", "USED", "LIMIT", "USE", "REPOSITORIES"],
            [
                [
                    q["repositories"],
                    size(q["used_bytes"]),
                    size(q["limit_bytes"]),
                    f"{100 * q['used_bytes'] / q['limit_bytes']:.1f} %",
                    str(q["repository_count"]),
                ]
                for q in quotas
            ],
            title="quotas",
        )
    output.stdout().print(
        f"registry total {size(usage['total_bytes'])} in {output.count(usage['blobs'], 'blob')}; "
        f"gc would free {size(usage['reclaimable_bytes'])} now"
    )
    if usage.get("mirrors"):
        # A pull-through cache: what eviction may take apart from what was pushed.
        output.stdout().print(
            f"pushed {size(usage['pushed_bytes'])}, cached from upstreams "
            f"{size(usage['cached_bytes'])} ("
            + ", ".join(
                f"{m['prefix']}: {size(m['bytes'])}"
                + (f" of {size(m['max_size'])}" if m["max_size"] else "")
                for m in usage["mirrors"]
            )
            + ")"
        )
    held = _held_note(usage.get("held_bytes"), usage.get("grace_seconds"))
    if held:
        output.stdout().print(held)


def prune(
    ctx: typer.Context,
    repository: Annotated[str, typer.Argument(help="[HOST[:PORT]/]REPO", show_default=False)],
    keep_last: Annotated[
        int | None,
        typer.Option(min=0, help="Keep the N most recently pushed tags.", show_default=False),
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(help="Keep tags matching this regular expression.", show_default=False),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Only remove tags pushed longer ago than this (e.g. 30d).", show_default=False
        ),
    ] = None,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Remove tags by retention policy (newest by push time first; versions like v1.10
    sort after v1.9). Manifests and blobs go at the next gc."""
    if keep_last is None and keep is None and older_than is None:
        raise UsageProblem("give at least one of --keep-last, --keep, --older-than")
    if keep is not None:
        try:
            re.compile(keep)
        except re.error as exc:
            raise UsageProblem(f"--keep is not a valid regular expression: {exc}") from None
    seconds = parse_duration(older_than) if older_than is not None else None
    ref = parse_ref(repository, what="repository", tag=False, digest=False)
    assert ref.host is not None

    async def work(client: RegistryClient) -> dict[str, Any]:
        return await admin_client(ctx, client, ref.host or "").prune(
            ref.repository, keep_last=keep_last, keep=keep, older_than=seconds, dry_run=dry_run
        )

    result = run_client(ctx, work)
    for tag in result["removed"]:
        # ISO 8601 under the name ls --json uses for the same moment.
        tag["pushed"] = output.iso_from_epoch(tag.pop("pushed_at", None))
    if as_json:
        output.emit_json(result)
        return
    if quiet:
        return
    verb = "would remove" if dry_run else "removed"
    console = output.stdout()
    for tag in result["removed"]:
        console.print(f"{verb} {ref.repository}:{tag['tag']} ({tag['digest']})")
    console.print(
        f"{output.count(len(result['removed']), 'tag')} {verb}, {len(result['kept'])} kept"
    )


def rm_repo(
    ctx: typer.Context,
    repository: Annotated[str, typer.Argument(help="[HOST[:PORT]/]REPO", show_default=False)],
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Delete a repository with all its tags and manifests; its blobs go at the next gc."""
    ref = parse_ref(repository, what="repository", tag=False, digest=False)

    async def work(client: RegistryClient) -> dict[str, Any]:
        return await admin_client(ctx, client, ref.host or "").delete_repository(
            ref.repository, dry_run=dry_run
        )

    result = run_client(ctx, work)
    if as_json:
        output.emit_json(result)
        return
    if quiet:
        return
    if dry_run:
        output.stdout().print(
            f"would delete {ref.repository} and its {output.count(result['tags'], 'tag')}"
        )
    else:
        output.stdout().print(
            f"deleted {ref.repository}: {output.count(result['tags'], 'tag')}, "
            f"{output.count(result['manifests'], 'manifest')}"
        )


def verify(
    ctx: typer.Context,
    registry: RegistryArg = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Quarantine corrupt blobs, forget rows of missing ones (clients then push "
            "them again) and remove old files nothing knows about.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Re-hash every stored blob; report corrupt, missing and unknown ones. Exits 1 when
    the store is damaged (and was not repaired)."""
    host = _host(registry)

    async def work(client: RegistryClient) -> dict[str, Any]:
        return await admin_client(ctx, client, host).verify(repair=repair)

    report = run_client(ctx, work)
    if as_json:
        output.emit_json(report)
    else:
        console = output.stdout()
        for kind in ("corrupt", "missing", "unknown"):
            for entry in report[kind]:
                console.print(f"{kind} {entry['digest']} ({output.human_size(entry['size'])})")
        state = "healthy" if report["healthy"] else ("repaired" if repair else "DAMAGED")
        console.print(
            f"{state}: {output.count(report['checked'], 'blob')} checked "
            f"({output.human_size(report['bytes_checked'])}), {len(report['corrupt'])} corrupt, "
            f"{len(report['missing'])} missing, {len(report['unknown'])} unknown "
            f"({report['seconds']:.2f} s)"
        )
    if not report["healthy"] and not repair:
        raise typer.Exit(1)


def import_registry2(
    ctx: typer.Context,
    root: Annotated[
        str,
        typer.Argument(
            help="A Distribution 2.x storage root (it holds docker/registry/v2/) on the regd "
            "host, or s3://BUCKET/PREFIX: the bucket regd itself stores in",
            show_default=False,
        ),
    ],
    registry: RegistryArg = None,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
) -> None:
    """Adopt a registry:2 store: index its repositories, tags and manifests into regd.

    When ROOT is regd's own storage root no blob is copied; otherwise blobs are streamed
    in and verified."""
    host = _host(registry)
    absolute = root if root.startswith("s3://") else str(Path(root).expanduser().resolve())

    async def work(client: RegistryClient) -> dict[str, Any]:
        return await admin_client(ctx, client, host).import_registry2(absolute, dry_run=dry_run)

    report = run_client(ctx, work)
    if as_json:
        output.emit_json(report)
        return
    if quiet:
        return
    console = output.stdout()
    for entry in report["skipped"]:
        what = entry.get("digest") or entry.get("tag")
        console.print(f"skipped {entry['repository']} {what}: {entry['reason']}")
    how = (
        f"copied {output.human_size(report['bytes_copied'])}"
        if report["copied_bytes"]
        else ("in place, nothing copied")
    )
    verb = "would import" if dry_run else "imported"
    console.print(
        f"{verb} {output.count(len(report['repositories']), 'repository', 'repositories')}, "
        f"{output.count(report['manifests'], 'manifest')}, {output.count(report['tags'], 'tag')}, "
        f"{output.count(report['blobs'], 'blob link')} ({how}; {report['seconds']:.2f} s)"
    )


def register(app: typer.Typer) -> None:
    app.command()(gc)
    app.command()(du)
    app.command()(prune)
    app.command("rm-repo")(rm_repo)
    app.command()(verify)
    app.command("import-registry2")(import_registry2)
