"""A typed async client for the OCI Distribution API, usable against any registry.

regctl uses it for everything it does over the network, and regd can use it to talk to
other registries, so it depends only on regd.oci, httpx, trio and the standard library,
never on the daemon's own packages (config, metadata, storage, registry, api).

    transport   requests, addressing, Basic/Bearer authentication, error mapping
    manifests   manifests and referrers
    blobs       blob reads, mounts and uploads
    listing     the `/v2/` check, catalog and tag lists
    registry    RegistryClient, all of the above in one object
    admin       regd's admin API
    copy        images, indexes and artifacts between repositories
    layout      OCI image layout directories as a copy source and destination
    auth        docker config.json credentials and auth challenges
    errors      ClientError and its subclasses
    tasks       a nursery that raises its first real error

    async with RegistryClient() as client:
        fetched = await client.get_manifest(parse_reference("127.0.0.1:5000/app:1"))
"""

from regd.client.auth import Credentials, CredentialStore
from regd.client.blobs import MONOLITHIC_LIMIT, BlobStream
from regd.client.copy import (
    BlobOutcome,
    CopyOptions,
    CopyProgress,
    CopyReport,
    Platform,
    copy,
    copy_repository,
)
from regd.client.errors import (
    AuthError,
    ClientError,
    ConnectError,
    DigestMismatchError,
    NotFoundError,
    ProtocolError,
    ResponseError,
    UnsupportedError,
)
from regd.client.manifests import FetchedManifest, ManifestHead, PushedManifest, Referrers
from regd.client.registry import RegistryClient
from regd.client.transport import is_loopback, tls_verification

__all__ = [
    "MONOLITHIC_LIMIT",
    "AuthError",
    "BlobOutcome",
    "BlobStream",
    "ClientError",
    "ConnectError",
    "CopyOptions",
    "CopyProgress",
    "CopyReport",
    "CredentialStore",
    "Credentials",
    "DigestMismatchError",
    "FetchedManifest",
    "ManifestHead",
    "NotFoundError",
    "Platform",
    "ProtocolError",
    "PushedManifest",
    "Referrers",
    "RegistryClient",
    "ResponseError",
    "UnsupportedError",
    "copy",
    "copy_repository",
    "is_loopback",
    "tls_verification",
]
