"""The s3 driver's options, the boto3 session its clients share, and the error codes it
tells apart."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from regd.storage.s3._common import MAX_PART, MiB

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_THROTTLED = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "503",
        "500",
    }
)
# A version pinned by If-Match is gone, or the range lies beyond a file now shorter.
_CHANGED = frozenset({"PreconditionFailed", "412", "InvalidRange", "416"})
_DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken"}
)


_session_lock = threading.Lock()
_shared: list[Any] = []


def _boto_session() -> Any:
    """One boto3 session per process: it caches the service models, which each new
    session would load again (a noticeable pause per driver). Credentials and region are
    given to each client, not to the session."""
    import boto3

    with _session_lock:
        if not _shared:
            _shared.append(boto3.session.Session())
        return _shared[0]


@dataclass(frozen=True, slots=True)
class S3Options:
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    path_style: bool = False
    access_key: str | None = None
    secret_key: str | None = None
    # "AES256" or "aws:kms"; None leaves it to the bucket's default.
    encryption: str | None = None
    storage_class: str | None = None
    ca_bundle: str | None = None
    redirect: bool = False
    redirect_expiry: float = 1200.0
    chunk_size: int = 10 * MiB
    # Above this size a move copies in parts (CopyObject stops at 5 GiB).
    copy_threshold: int = MAX_PART
    max_connections: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    retries: int = 3

    def where(self) -> str:
        base = f"s3://{self.bucket}"
        return f"{base}/{self.prefix.strip('/')}" if self.prefix.strip("/") else base
