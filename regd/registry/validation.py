"""Turning client-supplied names and digests into domain values, or OCI errors."""

from __future__ import annotations

from regd.errors import DigestInvalid, NameInvalid, TagInvalid
from regd.oci.digest import Digest, DigestError
from regd.oci.names import NameError_, check_repository, check_tag


def repository_name(name: str) -> str:
    try:
        return check_repository(name)
    except NameError_ as exc:
        raise NameInvalid(str(exc), {"name": name[:300]}) from None


def digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as exc:
        raise DigestInvalid(str(exc), {"digest": text[:300]}) from None


def tag(text: str) -> str:
    try:
        return check_tag(text)
    except NameError_ as exc:
        raise TagInvalid(str(exc), {"tag": text[:300]}) from None


def is_digest_reference(reference: str) -> bool:
    """Tags cannot contain ':', digests always do."""
    return ":" in reference
