"""Readiness: whether the database and the storage answer, each checked for real."""

from __future__ import annotations

from regd.metadata import health as metadata_health
from regd.registry import Registry

# Written, not only read, by each check: a volume that turned read-only or full still
# answers reads. Outside Distribution's tree, so an adopted root stays as it was.
STORAGE_PROBE = ".regd-readiness-probe"


async def check_database(registry: Registry) -> None:
    await metadata_health.ping(registry.metadata)


async def check_storage(registry: Registry) -> None:
    await registry.storage.put_content(STORAGE_PROBE, b"ready\n")
