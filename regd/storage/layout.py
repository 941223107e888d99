"""Where things live, following Distribution 2.x's storage layout.

Keeping blob paths identical to `registry:2` lets regd adopt an existing storage root or
bucket in place.
"""

from __future__ import annotations

from regd.oci.digest import Digest

ROOT = "docker/registry/v2"


def blob_data(digest: Digest) -> str:
    return f"{ROOT}/blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def blobs_root() -> str:
    return f"{ROOT}/blobs"


def repository(name: str) -> str:
    return f"{ROOT}/repositories/{name}"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{ROOT}/repositories/{name}/_uploads/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def blob_dir(digest: Digest) -> str:
    return f"{ROOT}/blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def quarantine_data(digest: Digest) -> str:
    """Where `verify --repair` moves a blob whose bytes do not match its digest."""
    return f"{ROOT}/quarantine/{digest.algorithm}/{digest.hex}/data"
