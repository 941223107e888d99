"""Grace periods, ages and expiry are judged by the clock given to Registry.create.

The clock starts at the real time the store writes its rows with, and the tests move it
hours ahead: what the decisions see is the injected time, not the machine's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regd.clock import ManualClock
from regd.metadata import MetadataStore, sqlite_url
from regd.oci.digest import Digest
from regd.registry import Policy, Registry, RetentionPolicy
from regd.storage import FilesystemDriver, layout

HOUR = 3600.0


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


@pytest.fixture
async def registry(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> AsyncIterator[Registry]:
    store = MetadataStore(database_url or sqlite_url(tmp_path / "regd.db"))
    store.create_schema()
    reg = Registry.create(FilesystemDriver(tmp_path / "blobs"), store, clock=clock)
    yield reg
    await reg.aclose()


async def push(registry: Registry, repository: str, data: bytes) -> str:
    await registry.uploads.monolithic(repository, sha256(data), body(data), len(data))
    return sha256(data)


async def test_the_grace_period_ends_by_the_clock(registry: Registry, clock: ManualClock) -> None:
    loose = await push(registry, "app", b"nobody references me")
    policy = Policy(grace_seconds=HOUR)
    assert (await registry.lifecycle.usage(grace_seconds=HOUR))["reclaimable_bytes"] == 0
    assert (await registry.lifecycle.collect(policy, dry_run=False)).blobs == []
    clock.advance(2 * HOUR)
    assert (await registry.lifecycle.usage(grace_seconds=HOUR))["reclaimable_bytes"] == 20
    plan = await registry.lifecycle.collect(policy, dry_run=False)
    assert [b["digest"] for b in plan.blobs] == [loose]


async def test_stale_uploads_age_by_the_clock(registry: Registry, clock: ManualClock) -> None:
    session = await registry.uploads.start("app")
    assert await registry.lifecycle.purge_uploads(HOUR) == 0
    clock.advance(2 * HOUR)
    assert await registry.lifecycle.purge_uploads(HOUR) == 1
    assert await registry.metadata.get_upload(session.id) is None


async def test_retention_ages_tags_by_the_clock(registry: Registry, clock: ManualClock) -> None:
    config = await push(registry, "app", b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/x", "digest": config, "size": 2},
            "layers": [],
        }
    ).encode()
    await registry.manifests.put("app", "v1", manifest, None)
    policy = RetentionPolicy(older_than=HOUR)
    assert (await registry.repositories.prune("app", policy, dry_run=True))["removed"] == []
    clock.advance(2 * HOUR)
    result = await registry.repositories.prune("app", policy, dry_run=True)
    assert [t["tag"] for t in result["removed"]] == ["v1"]


async def test_verify_judges_unknown_files_old_by_the_clock(
    registry: Registry, clock: ManualClock, tmp_path: Path
) -> None:
    data = os.urandom(64)
    stray = tmp_path / "blobs" / layout.blob_data(Digest.of(data))
    stray.parent.mkdir(parents=True)
    stray.write_bytes(data)
    report = await registry.integrity.verify(repair=True, grace_seconds=HOUR)
    assert [(e["digest"], e["old"]) for e in report.unknown] == [(sha256(data), False)]
    assert stray.exists()
    clock.advance(2 * HOUR)
    report = await registry.integrity.verify(repair=True, grace_seconds=HOUR)
    assert [(e["digest"], e["old"]) for e in report.unknown] == [(sha256(data), True)]
    assert not stray.exists()
