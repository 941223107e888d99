"""The metadata store: repositories, blobs, manifests, tags and uploads as rows.

`MetadataStore` is the database plumbing (regd/metadata/engine.py) with one mixin per concern, each
in its own module with its own prebuilt statements. Mixins rather than composed objects:
callers keep calling `store.link_blob(...)`, the concerns call one another's helpers in the
same transaction (a blob link ends an upload and releases a lease) as plain methods, and
the hot paths stay one attribute lookup from their prebuilt statement.
"""

from __future__ import annotations

from regd.metadata.blobs import Blobs
from regd.metadata.hashstates import HashStates
from regd.metadata.listings import Listings
from regd.metadata.manifests import Manifests


class MetadataStore(Manifests, Blobs, HashStates, Listings):
    """Registry metadata on SQLite or PostgreSQL: `MetadataStore(url, clock=...)`."""
