"""Names and sizes that the metadata and the registry layer must agree on.

Collection's safety rests on a blob's lease having one name wherever a request places,
links or removes that blob, so the name is spelled here once; both layers import it.
"""

from __future__ import annotations

# Rows per statement when a long list of keys goes into `IN (...)`: well under SQLite's
# bound-parameter limit and PostgreSQL's comfortable statement size.
BATCH_SIZE = 500


def blob_lease(digest: str) -> str:
    """The lease a request holds while it places, links or removes the blob `digest`."""
    return f"blob:{digest}"
