"""copy: images, indexes and artifacts between repositories and registries."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from regctl import output
from regctl.runtime import UsageProblem, parse_ref, run_client
from regd.client import (
    BlobOutcome,
    CopyOptions,
    CopyReport,
    Platform,
    RegistryClient,
    copy_repository,
)
from regd.client import copy as copy_image
from regd.client.layout import (
    LayoutReference,
    copy_from_layout,
    copy_to_layout,
    parse_layout_reference,
)
from regd.oci.digest import Digest


class _RichProgress:
    """One bar per blob, with bytes and speed; blobs skipped or mounted show as such."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[Digest, TaskID] = {}

    def blob_started(self, digest: Digest, size: int) -> None:
        self._tasks[digest] = self._progress.add_task(_short(digest), total=size)

    def blob_advanced(self, digest: Digest, nbytes: int) -> None:
        task = self._tasks.get(digest)
        if task is not None:
            self._progress.advance(task, nbytes)

    def blob_finished(self, digest: Digest, size: int, outcome: BlobOutcome) -> None:
        task = self._tasks.get(digest)
        label = f"{_short(digest)} {outcome}"
        if task is None:
            self._progress.add_task(label, total=size or 1, completed=size or 1)
        else:
            self._progress.update(task, description=label, completed=size)


def _short(digest: Digest) -> str:
    return f"{digest.algorithm}:{digest.hex[:12]}"


def _summary(report: CopyReport) -> str:
    text = f"copied {report.source} -> {report.destination} ({report.digest})"
    parts = [
        f"{report.manifests} manifest{'s' if report.manifests != 1 else ''}",
        f"{report.blobs_copied} blob{'s' if report.blobs_copied != 1 else ''} sent "
        f"({output.human_size(report.bytes_copied)})",
    ]
    if report.blobs_skipped:
        parts.append(f"{report.blobs_skipped} already there")
    if report.blobs_mounted:
        parts.append(f"{report.blobs_mounted} mounted")
    if report.referrers:
        parts.append(f"{report.referrers} referrer{'s' if report.referrers != 1 else ''}")
    text += ": " + ", ".join(parts)
    if report.index_digest is not None:
        text += f"\nplatform {report.platforms[0]} of index {report.index_digest}"
    if report.filtered:
        text += (
            f"\nplatform filter: pushed a new index with {', '.join(report.platforms)}; "
            f"its digest differs from the source index {report.source_digest}"
        )
    return text


def _layout(text: str) -> LayoutReference | None:
    try:
        return parse_layout_reference(text)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def _copy_layout(
    ctx: typer.Context,
    source: str,
    destination: str,
    src_layout: LayoutReference | None,
    dst_layout: LayoutReference | None,
    platforms: list[Platform],
    *,
    as_json: bool,
    quiet: bool,
) -> None:
    wanted = platforms[0] if platforms else None
    if dst_layout is not None:
        src = parse_ref(source, what="source")
        if dst_layout.digest is not None:
            raise UsageProblem("a copy destination cannot name a digest: digests are preserved")
        layout_dst = dst_layout

        async def pull(client: RegistryClient) -> CopyReport:
            return await copy_to_layout(client, src, layout_dst, platform=wanted)

        report = run_client(ctx, pull)
    else:
        assert src_layout is not None
        layout_src = src_layout
        dst = parse_ref(destination, what="destination", digest=False)

        async def push(client: RegistryClient) -> CopyReport:
            return await copy_from_layout(client, layout_src, dst, platform=wanted)

        report = run_client(ctx, push)
    if as_json:
        output.emit_json(report.to_json())
    elif not quiet:
        output.stdout().print(_summary(report), markup=False)


def copy(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="[REGISTRY/]REPO[:TAG]\\[@DIGEST], or oci:DIR[:TAG] (an OCI image layout), "
            "to copy from."
        ),
    ],
    destination: Annotated[
        str,
        typer.Argument(
            help="[REGISTRY/]REPO[:TAG], or oci:DIR[:TAG], to copy to (default tag: the source's)."
        ),
    ],
    platform: Annotated[
        list[str] | None,
        typer.Option(
            "--platform",
            help="Copy only this os/arch or os/arch/variant of an index: its own manifest, "
            "digest preserved (repeatable with --keep-index).",
            show_default=False,
        ),
    ] = None,
    keep_index: Annotated[
        bool,
        typer.Option(
            "--keep-index",
            help="With --platform: push a new index listing only the chosen platforms "
            "(its digest differs from the source's).",
        ),
    ] = False,
    referrers: Annotated[
        bool, typer.Option("--referrers", help="Also copy attached artifacts (signatures, SBOMs).")
    ] = False,
    all_tags: Annotated[
        bool, typer.Option("--all-tags", help="Copy every tag of the source repository.")
    ] = False,
    jobs: Annotated[
        int, typer.Option("-j", "--jobs", min=1, max=64, help="Blobs transferred at once.")
    ] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="No progress display, no summary.")
    ] = False,
) -> None:
    """Copy an image, index or artifact between registries, digests preserved.

    Blobs the destination has are skipped, blobs within one registry are mounted, the
    rest stream from source to destination without being held in memory. Running an
    interrupted copy again sends only what is missing.

    Either side may be an OCI image layout directory, as skopeo names one:
    oci:DIR[:TAG] or oci:DIR@DIGEST (oci-dir: also works); a destination directory is
    created, its index.json names the image by TAG.
    """
    try:
        platforms = [Platform.parse(p) for p in platform or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--platform") from None
    if len(platforms) > 1 and not keep_index:
        raise UsageProblem("several --platform options need --keep-index (one index for them)")
    if keep_index and not platforms:
        raise UsageProblem("--keep-index only applies with --platform")
    src_layout, dst_layout = _layout(source), _layout(destination)
    if src_layout is not None or dst_layout is not None:
        if src_layout is not None and dst_layout is not None:
            raise UsageProblem(
                "copy between two OCI layouts is not supported; one side is a registry"
            )
        for flag, given in (
            ("--all-tags", all_tags),
            ("--referrers", referrers),
            ("--keep-index", keep_index),
        ):
            if given:
                raise UsageProblem(f"{flag} does not apply to an OCI layout")
        _copy_layout(
            ctx,
            source,
            destination,
            src_layout,
            dst_layout,
            platforms,
            as_json=as_json,
            quiet=quiet,
        )
        return
    src = parse_ref(source, what="source")
    dst = parse_ref(destination, what="destination", digest=False)
    if all_tags and (src.tag or src.digest or dst.tag):
        raise UsageProblem("--all-tags copies whole repositories: give REPO, not REPO:TAG")

    console = output.stderr()
    show_progress = console.is_terminal and not quiet and not as_json
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=console,
        disable=not show_progress,
    )
    sink = _RichProgress(progress) if show_progress else None

    options = CopyOptions(
        platforms=platforms, keep_index=keep_index, referrers=referrers, jobs=jobs, progress=sink
    )

    async def work(client: RegistryClient) -> list[CopyReport]:
        if all_tags:
            return await copy_repository(client, src, dst, options)
        return [await copy_image(client, src, dst, options)]

    with progress:
        reports = run_client(ctx, work)
    if as_json:
        output.emit_json([r.to_json() for r in reports] if all_tags else reports[0].to_json())
    elif not quiet:
        out = output.stdout()
        for report in reports:
            out.print(_summary(report), markup=False)
        if all_tags and not reports:
            out.print(f"{src.host}/{src.repository} has no tags; nothing copied")


def register(root: typer.Typer) -> None:
    root.command()(copy)
