"""One store for the metadata tests, on each backend (`database_url`: SQLite, PostgreSQL),
on a clock that moves only when a test advances it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regd.clock import ManualClock
from regd.metadata import MetadataStore
from tests.helpers.store import metadata_store


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> AsyncIterator[MetadataStore]:
    async with metadata_store(database_url, tmp_path, clock=clock) as s:
        s.create_schema()  # idempotent
        yield s
