"""OCI image layout directories (`oci:PATH[:TAG]`, as skopeo spells them) as a copy source
and destination.

A layout is `oci-layout`, `index.json` (its entries named by the
`org.opencontainers.image.ref.name` annotation) and `blobs/<algorithm>/<hex>`. Blobs are
streamed between a registry and files a chunk at a time, hashed on the way; a file only
takes its final name once its content matches its digest.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from regd.client.copy import CopyProgress, CopyReport, Platform, platform_text
from regd.client.errors import ClientError, DigestMismatchError
from regd.client.manifests import MANIFEST_READ_LIMIT
from regd.client.registry import RegistryClient
from regd.oci import mediatypes as mt
from regd.oci.digest import Digest, DigestError, Hasher
from regd.oci.manifest import Descriptor, ManifestError, parse_manifest
from regd.oci.names import is_valid_tag
from regd.oci.reference import Reference

LAYOUT_PREFIXES = ("oci:", "oci-dir:")
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
CHUNK = 1024 * 1024


class LayoutError(ClientError):
    """An OCI layout directory that is missing, malformed, or lacks what was asked for."""


@dataclass(frozen=True, slots=True)
class LayoutReference:
    path: Path
    tag: str | None = None
    digest: Digest | None = None

    def __str__(self) -> str:
        out = f"oci:{self.path}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_layout_reference(text: str) -> LayoutReference | None:
    """`oci:PATH[:TAG]` or `oci:PATH@DIGEST` (also `oci-dir:`); None for anything else."""
    prefix = next((p for p in LAYOUT_PREFIXES if text.startswith(p)), None)
    if prefix is None:
        return None
    rest = text[len(prefix) :]
    digest: Digest | None = None
    if "@" in rest:
        rest, _, raw = rest.rpartition("@")
        try:
            digest = Digest.parse(raw)
        except DigestError as exc:
            raise ValueError(f"invalid OCI layout reference {text!r}: {exc}") from None
    tag: str | None = None
    head, sep, tail = rest.rpartition(":")
    if sep and head and "/" not in tail and is_valid_tag(tail):
        rest, tag = head, tail
    if not rest:
        raise ValueError(f"invalid OCI layout reference {text!r}: no directory")
    return LayoutReference(Path(rest), tag, digest)


class OciLayout:
    def __init__(self, root: Path) -> None:
        self.root = root

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def _read_index(self) -> bytes:
        path = self.root / "index.json"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise LayoutError(f"{self.root} is not an OCI layout: no index.json") from None
        except OSError as exc:
            raise LayoutError(f"{path}: cannot read: {exc.strerror}") from None

    def _index(self) -> dict[str, Any]:
        try:
            doc = json.loads(self._read_index())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LayoutError(f"{self.root / 'index.json'}: not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
            raise LayoutError(f"{self.root / 'index.json'}: not an image index")
        return doc

    def resolve(self, ref: LayoutReference) -> Descriptor:
        """The index.json entry a reference names: by digest, tag, or the only entry."""
        try:
            entries = list(parse_manifest(self._read_index(), mt.OCI_INDEX).manifests)
        except ManifestError as exc:
            raise LayoutError(f"{self.root / 'index.json'}: {exc}") from None
        if ref.digest is not None:
            found = [d for d in entries if d.digest == ref.digest]
        elif ref.tag is not None:
            found = [d for d in entries if d.annotations.get(REF_NAME) == ref.tag]
        else:
            found = entries if len(entries) == 1 else []
            if len(entries) > 1:
                names = sorted({d.annotations.get(REF_NAME, str(d.digest)) for d in entries})
                raise LayoutError(f"{ref}: several images, name one of: {', '.join(names)}")
        if not found:
            raise LayoutError(f"{ref}: not found in {self.root / 'index.json'}")
        return found[-1]

    async def read_manifest(self, digest: Digest) -> bytes:
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
            if size > MANIFEST_READ_LIMIT:
                raise LayoutError(f"{path}: manifest larger than {MANIFEST_READ_LIMIT} bytes")
            data = await trio.Path(path).read_bytes()
        except FileNotFoundError:
            raise LayoutError(f"{self.root}: blob {digest} is missing") from None
        actual = Digest.of(data, digest.algorithm)
        if actual != digest:
            raise DigestMismatchError(str(path), str(digest), str(actual))
        return data

    def has_blob(self, digest: Digest, size: int) -> bool:
        try:
            return self.blob_path(digest).stat().st_size == size
        except OSError:
            return False

    async def read_blob(self, digest: Digest) -> AsyncIterator[bytes]:
        """The blob's bytes a chunk at a time, checked against its digest at the end."""
        path = self.blob_path(digest)
        hasher = Hasher(digest.algorithm)
        try:
            handle = await trio.open_file(path, "rb")
        except FileNotFoundError:
            raise LayoutError(f"{self.root}: blob {digest} is missing") from None
        async with handle:
            while chunk := await handle.read(CHUNK):
                hasher.update(chunk)
                yield chunk
        if hasher.digest() != digest:
            raise DigestMismatchError(str(path), str(digest), str(hasher.digest()))

    async def write_blob(self, digest: Digest, chunks: AsyncIterator[bytes]) -> int:
        """Store a blob from a stream; it takes its name only once its digest matches."""
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{digest.hex}.{os.getpid()}.partial")
        hasher = Hasher(digest.algorithm)
        try:
            async with await trio.open_file(scratch, "wb") as handle:
                async for chunk in chunks:
                    hasher.update(chunk)
                    await handle.write(chunk)
            if hasher.digest() != digest:
                raise DigestMismatchError(f"blob for {path}", str(digest), str(hasher.digest()))
            scratch.replace(path)
        finally:
            scratch.unlink(missing_ok=True)
        return hasher.size

    def tag(self, descriptor: Descriptor, tag: str | None) -> None:
        """Record a manifest in index.json, under `tag` (replacing what had that name)."""
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / "oci-layout"
        if not marker.exists():
            marker.write_text(json.dumps(LAYOUT_VERSION))
        index_file = self.root / "index.json"
        doc: dict[str, Any] = (
            self._index()
            if index_file.exists()
            else {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
        )
        entry = descriptor.to_json()
        annotations = dict(entry.get("annotations") or {})
        if tag:
            annotations[REF_NAME] = tag
        if annotations:
            entry["annotations"] = annotations
        else:
            entry.pop("annotations", None)

        def keep(other: Any) -> bool:
            if not isinstance(other, dict):
                return False
            name = (other.get("annotations") or {}).get(REF_NAME)
            if tag:
                return bool(name != tag)
            return not (name is None and other.get("digest") == entry["digest"])

        existing: list[Any] = doc.get("manifests") or []
        doc["manifests"] = [m for m in existing if keep(m)] + [entry]
        scratch = index_file.with_name(f".index.json.{os.getpid()}")
        scratch.write_text(json.dumps(doc, indent=2) + "\n")
        scratch.replace(index_file)


def _count(report: CopyReport, progress: CopyProgress | None, blob: Descriptor, sent: bool) -> None:
    if sent:
        report.blobs_copied += 1
        report.bytes_copied += blob.size
    else:
        report.blobs_skipped += 1
    if progress is not None:
        progress.blob_finished(blob.digest, blob.size, "copied" if sent else "skipped")


def _pick(data: bytes, media_type: str, platform: Platform | None, where: str) -> Descriptor | None:
    if platform is None:
        return None
    manifest = parse_manifest(data, media_type)
    if not manifest.is_index:
        return None
    for child in manifest.manifests:
        if platform.matches(child.platform):
            return child
    raise ClientError(f"{where}: no manifest in the index matches {platform}")


async def copy_to_layout(
    client: RegistryClient,
    src: Reference,
    dst: LayoutReference,
    *,
    platform: Platform | None = None,
    progress: CopyProgress | None = None,
) -> CopyReport:
    """Pull what `src` names (with an index's children) into an OCI layout directory."""
    if dst.digest is not None:
        raise ValueError("a copy destination cannot name a digest: digests are preserved")
    layout = OciLayout(dst.path)
    tag = dst.tag or src.tag or (None if src.digest else "latest")
    report = CopyReport(str(src), str(LayoutReference(dst.path, tag)))
    fetched = await client.get_manifest(src)
    report.source_digest = fetched.digest
    child = _pick(fetched.data, fetched.media_type, platform, str(src))
    if child is not None:
        report.index_digest = fetched.digest
        report.platforms = [platform_text(child.platform)]
        fetched = await client.get_manifest(Reference(src.host, src.repository, None, child.digest))
    repo = Reference(src.host, src.repository)

    async def pull(data: bytes, media_type: str, digest: Digest) -> None:
        manifest = parse_manifest(data, media_type)
        for item in manifest.manifests:
            got = await client.get_manifest(
                Reference(repo.host, repo.repository, None, item.digest)
            )
            await pull(got.data, got.media_type, got.digest)
        for blob in manifest.blob_references():
            present = layout.has_blob(blob.digest, blob.size)
            if not present:
                target = Reference(repo.host, repo.repository, None, blob.digest)
                async with client.open_blob(target) as stream:
                    await layout.write_blob(blob.digest, stream.chunks())
            _count(report, progress, blob, not present)
        if not layout.has_blob(digest, len(data)):
            await layout.write_blob(digest, _one(data))
        report.manifests += 1

    await pull(fetched.data, fetched.media_type, fetched.digest)
    layout.tag(Descriptor(fetched.media_type, fetched.digest, len(fetched.data)), tag)
    report.digest = fetched.digest
    report.media_type = fetched.media_type
    return report


async def copy_from_layout(
    client: RegistryClient,
    src: LayoutReference,
    dst: Reference,
    *,
    platform: Platform | None = None,
    progress: CopyProgress | None = None,
) -> CopyReport:
    """Push what an OCI layout names (with an index's children) to a registry."""
    if dst.digest is not None:
        raise ValueError("a copy destination cannot name a digest: digests are preserved")
    layout = OciLayout(src.path)
    top = layout.resolve(src)
    tag = dst.tag or src.tag or top.annotations.get(REF_NAME)
    report = CopyReport(str(src), "")
    data = await layout.read_manifest(top.digest)
    media_type = _media_type(data, top.media_type)
    report.source_digest = top.digest
    child = _pick(data, media_type, platform, str(src))
    digest = top.digest
    if child is not None:
        report.index_digest, digest = top.digest, child.digest
        report.platforms = [platform_text(child.platform)]
        data = await layout.read_manifest(child.digest)
        media_type = _media_type(data, child.media_type)

    async def push(data: bytes, media_type: str, target: Reference) -> None:
        manifest = parse_manifest(data, media_type)
        for item in manifest.manifests:
            child_data = await layout.read_manifest(item.digest)
            await push(
                child_data,
                _media_type(child_data, item.media_type),
                Reference(dst.host, dst.repository, None, item.digest),
            )
        for blob in manifest.blob_references():
            blob_ref = Reference(dst.host, dst.repository, None, blob.digest)
            present = await client.blob_size(blob_ref) is not None
            if not present:
                await client.push_blob(blob_ref, layout.read_blob(blob.digest), blob.size)
            _count(report, progress, blob, not present)
        await client.put_manifest(target, data, media_type)
        report.manifests += 1

    target = Reference(dst.host, dst.repository, tag, None if tag else digest)
    await push(data, media_type, target)
    report.destination = str(target)
    report.digest = digest
    report.media_type = media_type
    return report


def _media_type(data: bytes, declared: str) -> str:
    if declared in mt.MANIFESTS:
        return declared
    try:
        found = json.loads(data).get("mediaType")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        found = None
    return found if isinstance(found, str) and found else declared


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
