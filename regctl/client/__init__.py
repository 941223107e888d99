"""A typed async client for the OCI Distribution API, usable against any registry.

    async with RegistryClient() as client:
        fetched = await client.get_manifest(parse_reference("127.0.0.1:5000/app:1"))

References passed in must name their host; the command-line tool fills in its default.
"""

from regctl.client.auth import Credentials, CredentialStore
from regctl.client.copy import (
    BlobOutcome,
    CopyProgress,
    CopyReport,
    Platform,
    copy,
    copy_repository,
)
from regctl.client.errors import (
    AuthError,
    ConnectError,
    DigestMismatchError,
    NotFoundError,
    ProtocolError,
    RegistryError,
    ResponseError,
    UnsupportedError,
)
from regctl.client.registry import (
    BlobStream,
    FetchedManifest,
    ManifestInfo,
    PushedManifest,
    Referrers,
    RegistryClient,
    is_loopback,
)

__all__ = [
    "AuthError",
    "BlobOutcome",
    "BlobStream",
    "ConnectError",
    "CopyProgress",
    "CopyReport",
    "CredentialStore",
    "Credentials",
    "DigestMismatchError",
    "FetchedManifest",
    "ManifestInfo",
    "NotFoundError",
    "Platform",
    "ProtocolError",
    "PushedManifest",
    "Referrers",
    "RegistryClient",
    "RegistryError",
    "ResponseError",
    "UnsupportedError",
    "copy",
    "copy_repository",
    "is_loopback",
]
