"""Parsing and structural validation of manifests and indexes.

The registry stores a manifest's bytes exactly as pushed; this module only reads them to
learn what they reference (config, layers, child manifests, subject).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from regd.oci import mediatypes as mt
from regd.oci.digest import Digest, DigestError


class ManifestError(ValueError):
    """The bytes are not a manifest this registry accepts."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None

    @property
    def is_foreign(self) -> bool:
        """Layers that registries are not expected to hold."""
        return bool(self.urls) or self.media_type in mt.NON_DISTRIBUTABLE_LAYERS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str]

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    @property
    def effective_artifact_type(self) -> str | None:
        """What the referrers API reports: `artifactType`, else the config's media type."""
        if self.artifact_type:
            return self.artifact_type
        if self.config is not None:
            return self.config.media_type
        return None

    def blob_references(self) -> tuple[Descriptor, ...]:
        """Blobs the registry must hold before accepting this manifest."""
        refs = (self.config,) if self.config is not None else ()
        return refs + tuple(d for d in self.layers if not d.is_foreign)


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{where} must be an object of strings")
    return value


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"{where}.mediaType must be a non-empty string")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise ManifestError(f"{where}.digest must be a string")
    try:
        digest = Digest.parse(raw_digest)
    except DigestError as exc:
        raise ManifestError(f"{where}.digest: {exc}") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}.size must be a non-negative integer")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{where}.urls must be a list of strings")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ManifestError(f"{where}.platform must be an object")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestError(f"{where}.artifactType must be a string")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=artifact_type,
        urls=tuple(urls),
        annotations=_str_map(value.get("annotations"), f"{where}.annotations"),
        platform=platform,
    )


def _descriptors(value: Any, where: str) -> tuple[Descriptor, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestError(f"{where} must be a list")
    return tuple(_descriptor(v, f"{where}[{i}]") for i, v in enumerate(value))


def _base_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    # Generic types say nothing about which manifest this is.
    if base in ("", "application/json", "application/octet-stream", "text/plain"):
        return None
    return base


# Far deeper than any manifest or request document needs; Python's parser recurses per
# level and fails with RecursionError near 1,000, so documents are refused long before.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
# Openers become 1 and closers -1 (as signed bytes), everything else is dropped: the
# running sum is the depth. Whether brackets pair up by kind is the parser's business.
_DEPTH_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def nesting_problem(raw: bytes, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why a JSON document nests too deeply to parse, or None when it does not.

    A document with few brackets cannot be deep, which settles nearly every manifest
    without a pass over it; otherwise the strings are cut out and the depth summed in C.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return None
    steps = _JSON_STRING.sub(b"", raw).translate(_DEPTH_STEPS, _NOT_BRACKET)
    deepest = max(accumulate(memoryview(steps).cast("b")), default=0)
    if deepest > limit:
        return f"it nests {deepest} levels deep; the limit is {limit}"
    return None


def parse_manifest(payload: bytes, content_type: str | None = None) -> Manifest:
    """Parse `payload`, reconciling its `mediaType` with the request's Content-Type."""
    declared = _base_type(content_type)
    if declared in mt.SCHEMA1:
        raise ManifestError(
            "Docker image manifest schema 1 is obsolete and not accepted; push schema 2 "
            "or OCI manifests",
            unsupported=True,
        )
    problem = nesting_problem(payload)
    if problem is not None:
        raise ManifestError(f"manifest is not acceptable JSON: {problem}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")

    schema_version = doc.get("schemaVersion")
    if schema_version == 1:
        raise ManifestError(
            "Docker image manifest schema 1 is obsolete and not accepted", unsupported=True
        )
    if schema_version != 2 or isinstance(schema_version, bool):
        raise ManifestError("schemaVersion must be 2")

    field_type = doc.get("mediaType")
    if field_type is not None and not isinstance(field_type, str):
        raise ManifestError("mediaType must be a string")
    if field_type and declared and field_type != declared:
        raise ManifestError(
            f"manifest mediaType {field_type!r} contradicts Content-Type {declared!r}"
        )
    media_type = field_type or declared
    if media_type is None:
        # OCI manifests may omit mediaType; their shape still tells which they are.
        if "manifests" in doc:
            media_type = mt.OCI_INDEX
        elif "config" in doc:
            media_type = mt.OCI_MANIFEST
        else:
            raise ManifestError("cannot tell the manifest's media type: set mediaType")
    if media_type not in mt.MANIFESTS:
        raise ManifestError(f"unsupported manifest media type {media_type!r}", unsupported=True)

    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestError("artifactType must be a string")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _str_map(doc.get("annotations"), "annotations")

    if media_type in mt.INDEXES:
        if "manifests" not in doc:
            raise ManifestError("an index must have a manifests list")
        if "config" in doc or "layers" in doc:
            raise ManifestError("an index has no config or layers")
        return Manifest(
            media_type=media_type,
            config=None,
            layers=(),
            manifests=_descriptors(doc["manifests"], "manifests"),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    if "config" not in doc:
        raise ManifestError("an image manifest must have a config descriptor")
    if "layers" not in doc or not isinstance(doc["layers"], list):
        raise ManifestError("an image manifest must have a layers list")
    if "manifests" in doc:
        raise ManifestError("an image manifest has no manifests list")
    return Manifest(
        media_type=media_type,
        config=_descriptor(doc["config"], "config"),
        layers=_descriptors(doc["layers"], "layers"),
        manifests=(),
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
