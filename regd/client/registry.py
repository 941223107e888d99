"""`RegistryClient`: one object offering every operation, built from the per-resource parts.

    async with RegistryClient() as client:
        fetched = await client.get_manifest(parse_reference("127.0.0.1:5000/app:1"))

References passed in must name their host; callers fill in their own default.
"""

from __future__ import annotations

from regd.client.blobs import BlobOps
from regd.client.listing import ListingOps
from regd.client.manifests import ManifestOps


class RegistryClient(ManifestOps, BlobOps, ListingOps):
    """Talks to any number of registries; every reference must carry its host."""
