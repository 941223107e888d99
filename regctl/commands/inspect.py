"""inspect and digest: what a reference points at."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from regctl import output
from regctl.runtime import parse_ref, run_client
from regd.client import ClientError, FetchedManifest, Platform, RegistryClient
from regd.oci import mediatypes as mt
from regd.oci.manifest import Descriptor
from regd.oci.reference import Reference

_IMAGE_CONFIGS = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})
_CONFIG_LIMIT = 16 * 1024 * 1024

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def platform_text(platform: dict[str, Any] | None) -> str | None:
    if not platform:
        return None
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    if platform.get("variant"):
        text += f"/{platform['variant']}"
    return text


def _descriptor_json(d: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": d.media_type, "digest": str(d.digest), "size": d.size}
    if d.artifact_type:
        out["artifactType"] = d.artifact_type
    if d.platform:
        out["platform"] = platform_text(d.platform)
    if d.annotations:
        out["annotations"] = d.annotations
    return out


def _config_summary(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    inner = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    assert isinstance(inner, dict)
    return {
        "created": doc.get("created"),
        "architecture": doc.get("architecture"),
        "os": doc.get("os"),
        "variant": doc.get("variant"),
        "entrypoint": inner.get("Entrypoint"),
        "cmd": inner.get("Cmd"),
        "workingDir": inner.get("WorkingDir") or None,
        "user": inner.get("User") or None,
        "env": inner.get("Env") or [],
        "labels": inner.get("Labels") or {},
    }


async def pick_platform(
    client: RegistryClient, ref: Reference, fetched: FetchedManifest, wanted: Platform
) -> tuple[Reference, FetchedManifest]:
    manifest = fetched.parse()
    if not manifest.is_index:
        raise ClientError(f"{ref} is not an index; --platform applies to indexes only")
    for child in manifest.manifests:
        if wanted.matches(child.platform):
            child_ref = Reference(ref.host, ref.repository, None, child.digest)
            return child_ref, await client.get_manifest(child_ref)
    raise ClientError(f"{ref}: no manifest in the index matches {wanted}")


async def gather(
    client: RegistryClient,
    ref: Reference,
    platform: Platform | None,
    with_referrers: bool,
) -> dict[str, Any]:
    fetched = await client.get_manifest(ref)
    index_digest = None
    if platform is not None:
        index_digest = fetched.digest
        ref, fetched = await pick_platform(client, ref, fetched, platform)
    manifest = fetched.parse()
    info: dict[str, Any] = {
        "reference": str(ref),
        "registry": ref.host,
        "repository": ref.repository,
        "tag": ref.tag,
        "digest": str(fetched.digest),
        "mediaType": fetched.media_type,
        "size": len(fetched.data),
        "artifactType": manifest.artifact_type,
        "annotations": manifest.annotations,
        "subject": _descriptor_json(manifest.subject) if manifest.subject else None,
    }
    if index_digest is not None:
        info["index"] = str(index_digest)
    if manifest.is_index:
        info["manifests"] = [_descriptor_json(d) for d in manifest.manifests]
    else:
        config = manifest.config
        assert config is not None
        summary: dict[str, Any] | None = None
        if config.media_type in _IMAGE_CONFIGS and config.size <= _CONFIG_LIMIT:
            raw = await client.get_blob(
                Reference(ref.host, ref.repository, None, config.digest), limit=_CONFIG_LIMIT
            )
            summary = _config_summary(raw)
        info["config"] = {**_descriptor_json(config), "summary": summary}
        info["layers"] = [_descriptor_json(d) for d in manifest.layers]
        info["totalSize"] = config.size + sum(d.size for d in manifest.layers)
    if with_referrers:
        found = await client.referrers(Reference(ref.host, ref.repository, None, fetched.digest))
        info["referrers"] = [_descriptor_json(d) for d in found.descriptors]
        info["referrersSource"] = found.source
    else:
        info["referrers"] = None
        info["referrersSource"] = None
    return info


def _render(info: dict[str, Any]) -> None:
    console = output.stdout()

    def line(key: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            console.print(f"[bold]{key + ':':<14}[/]{value}")

    line("Reference", info["reference"])
    if "index" in info:
        line("Index", info["index"])
    line("Digest", info["digest"])
    line("Media type", info["mediaType"])
    line("Size", f"{info['size']} B")
    line("Artifact type", info["artifactType"])
    if info["subject"]:
        line("Subject", info["subject"]["digest"])
    for key, value in sorted(info["annotations"].items()):
        line("Annotation", f"{key}={value}")
    if "manifests" in info:
        console.print()
        output.table(
            ["PLATFORM", "DIGEST", "TYPE", "SIZE"],
            [
                [
                    m.get("platform") or m.get("artifactType") or "-",
                    m["digest"],
                    output.short_type(m["mediaType"]),
                    output.human_size(m["size"]),
                ]
                for m in info["manifests"]
            ],
            title="Manifests",
        )
    if "config" in info:
        config = info["config"]
        summary = config["summary"] or {}
        console.print()
        line("Config", f"{config['digest']} ({config['mediaType']}, {config['size']} B)")
        line("Created", summary.get("created"))
        arch = "/".join(
            str(summary[k]) for k in ("os", "architecture", "variant") if summary.get(k)
        )
        line("Platform", arch)
        line("Entrypoint", json.dumps(summary["entrypoint"]) if summary.get("entrypoint") else None)
        line("Cmd", json.dumps(summary["cmd"]) if summary.get("cmd") else None)
        line("Working dir", summary.get("workingDir"))
        line("User", summary.get("user"))
        for env in summary.get("env") or []:
            line("Env", env)
        for key, value in sorted((summary.get("labels") or {}).items()):
            line("Label", f"{key}={value}")
        console.print()
        output.table(
            ["LAYER", "TYPE", "SIZE"],
            [[d["digest"], d["mediaType"], output.human_size(d["size"])] for d in info["layers"]],
            title=f"Layers (total {output.human_size(info['totalSize'])})",
        )
    if info["referrers"] is not None:
        console.print()
        if info["referrers"]:
            output.table(
                ["REFERRER", "ARTIFACT TYPE", "SIZE"],
                [
                    [r["digest"], r.get("artifactType") or "-", output.human_size(r["size"])]
                    for r in info["referrers"]
                ],
                title=f"Referrers (via {info['referrersSource']})",
            )
        else:
            console.print(f"Referrers: none (via {info['referrersSource']})")


def inspect(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="[REGISTRY/]REPO[:TAG]\\[@DIGEST]")],
    platform: Annotated[
        str | None,
        typer.Option(
            "--platform", help="For an index: inspect the os/arch or os/arch/variant child."
        ),
    ] = None,
    referrers: Annotated[
        bool, typer.Option("--referrers/--no-referrers", help="Look up attached artifacts.")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Show a manifest or index: platforms, layers, config summary and referrers."""
    ref = parse_ref(reference)
    wanted = platform_option(platform)
    info = run_client(ctx, lambda client: gather(client, ref, wanted, referrers))
    if as_json:
        output.emit_json(info)
    else:
        _render(info)


def platform_option(text: str | None) -> Platform | None:
    if text is None:
        return None
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--platform") from None


PlatformOption = Annotated[
    str | None,
    typer.Option(
        "--platform",
        help="For an index: the os/arch or os/arch/variant child's manifest.",
        show_default=False,
    ),
]


def digest(
    ctx: typer.Context,
    reference: Annotated[str, typer.Argument(help="[REGISTRY/]REPO[:TAG]\\[@DIGEST]")],
    platform: PlatformOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Print the digest of the manifest a reference points at."""
    ref = parse_ref(reference)
    wanted = platform_option(platform)

    async def work(client: RegistryClient) -> dict[str, Any]:
        if wanted is not None:
            _, child = await pick_platform(client, ref, await client.get_manifest(ref), wanted)
            return {
                "digest": str(child.digest),
                "mediaType": child.media_type,
                "size": len(child.data),
                "platform": str(wanted),
            }
        info = await client.head_manifest(ref)
        if info is None:
            # Let GET produce the registry's own 404 error with its code.
            fetched = await client.get_manifest(ref)
            return {"digest": str(fetched.digest), "mediaType": fetched.media_type}
        return {"digest": str(info.digest), "mediaType": info.media_type, "size": info.size}

    found = run_client(ctx, work)
    if as_json:
        output.emit_json({"reference": str(ref), **found})
    else:
        output.stdout().print(found["digest"])


def register(app: typer.Typer) -> None:
    app.command()(inspect)
    app.command()(digest)
