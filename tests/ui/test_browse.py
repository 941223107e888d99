"""The registry-layer queries behind the UI, on SQLite and PostgreSQL: keyset pages of tags
that visit every tag once, in order, by name and by push time (ties included)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from regd.clock import ManualClock
from regd.errors import NameUnknown, PaginationInvalid, TagInvalid
from regd.metadata import NewManifest
from regd.registry import Registry
from regd.registry.browse import Browsing, summarize_config
from regd.registry.manifests import Manifests
from regd.storage import MemoryDriver
from tests.helpers.oci import OCI_INDEX, OCI_MANIFEST, sha256
from tests.helpers.store import metadata_store

REPO = "team/app"


def _manifest(
    payload: bytes,
    media_type: str = OCI_MANIFEST,
    blobs: Sequence[str] = (),
    children: Sequence[str] = (),
) -> NewManifest:
    return NewManifest(
        digest=sha256(payload),
        media_type=media_type,
        size=len(payload),
        payload=payload,
        artifact_type=None,
        subject=None,
        annotations={},
        blobs=blobs,
        children=children,
    )


async def _pages(browsing: Browsing, *, by_time: bool, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    after = None
    while True:
        listing = await browsing.tags(REPO, by_time=by_time, after=after, limit=limit)
        pages.append([t.name for t in listing.tags])
        if listing.next_after is None:
            return pages
        after = listing.next_after


async def test_tag_pages_visit_every_tag_once_in_order(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> None:
    async with metadata_store(database_url, tmp_path, clock=clock) as store:
        browsing = Browsing(store, Manifests(store), Registry.create(MemoryDriver(), store).blobs)
        # Tags pushed in bursts: several share a push time, so the time order needs its
        # tie-break by name to page correctly.
        names = [f"t{i:03d}" for i in range(23)]
        for i, name in enumerate(names):
            payload = json.dumps({"schemaVersion": 2, "n": i}).encode()
            await store.put_manifest(REPO, _manifest(payload), [name])
            if i % 4 == 3:
                clock.advance(10)
        by_name = await _pages(browsing, by_time=False, limit=5)
        assert [len(p) for p in by_name] == [5, 5, 5, 5, 3]
        assert [n for p in by_name for n in p] == names
        by_time = await _pages(browsing, by_time=True, limit=5)
        flat = [n for p in by_time for n in p]
        # Newest burst first; within a burst (one instant), by name descending.
        bursts = [names[i : i + 4] for i in range(0, len(names), 4)]
        assert flat == [n for burst in reversed(bursts) for n in reversed(burst)]


async def test_tag_sizes_and_platforms_of_an_index(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> None:
    async with metadata_store(database_url, tmp_path, clock=clock) as store:
        registry = Registry.create(MemoryDriver(), store)
        children = []
        for arch, layer_size, hexchar in (("amd64", 1000, "1"), ("arm64", 2000, "2")):
            layer = f"sha256:{hexchar * 64}"
            await store.link_blob(REPO, layer, layer_size)
            payload = json.dumps({"schemaVersion": 2, "arch": arch}).encode()
            await store.put_manifest(REPO, _manifest(payload, blobs=[layer]), [arch])
            children.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256(payload),
                    "size": len(payload),
                    "platform": {"os": "linux", "architecture": arch},
                }
            )
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        ).encode()
        await store.put_manifest(
            REPO,
            _manifest(index, OCI_INDEX, children=[c["digest"] for c in children]),
            ["multi"],
        )
        listing = await registry.browsing.tags(REPO, by_time=False, after=None, limit=10)
        tags = {t.name: t for t in listing.tags}
        assert tags["multi"].platforms == ("linux/amd64", "linux/arm64")
        child_sizes = sum(int(str(c["size"])) for c in children)
        assert tags["multi"].size == len(index) + child_sizes + 3000
        assert tags["amd64"].platforms == ()
        assert tags["amd64"].size == int(str(children[0]["size"])) + 1000


async def test_unknown_repository_and_bad_cursor(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> None:
    async with metadata_store(database_url, tmp_path, clock=clock) as store:
        browsing = Registry.create(MemoryDriver(), store).browsing
        with pytest.raises(NameUnknown):
            await browsing.tags("no/such", by_time=False, after=None, limit=5)
        await store.put_manifest(REPO, _manifest(b'{"schemaVersion":2}'), ["a"])
        for cursor in ("no-separator", "nan~a"):
            with pytest.raises(PaginationInvalid):
                await browsing.tags(REPO, by_time=True, after=cursor, limit=5)
        with pytest.raises(TagInvalid):
            await browsing.tags(REPO, by_time=True, after="12~<b>", limit=5)


def test_config_summary_takes_what_is_there_and_nothing_odd() -> None:
    summary = summarize_config(
        json.dumps(
            {
                "os": "linux",
                "architecture": "arm64",
                "config": {"Entrypoint": ["/app"], "Labels": {"a": "<b>"}, "Env": "not a list"},
                "history": [{"created_by": "RUN x"}, "junk"],
            }
        ).encode()
    )
    assert summary.entrypoint == ["/app"]
    assert summary.labels == {"a": "<b>"}
    assert summary.env == []
    assert summary.history == [{"created_by": "RUN x"}]
    assert summarize_config(b"[1]").problem
    assert summarize_config(b"not json").problem


async def test_usage_without_tags_has_the_same_repository_figures(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> None:
    async with metadata_store(database_url, tmp_path, clock=clock) as store:
        registry = Registry.create(MemoryDriver(), store)
        shared, own = f"sha256:{'3' * 64}", f"sha256:{'4' * 64}"
        for repo, blobs in (("a/one", [shared, own]), ("b/two", [shared])):
            for digest in blobs:
                await store.link_blob(repo, digest, 1000 if digest == shared else 50)
            payload = json.dumps({"schemaVersion": 2, "repo": repo}).encode()
            await store.put_manifest(repo, _manifest(payload, blobs=blobs), ["x", "y"])
        full = await registry.lifecycle.usage()
        light = await registry.lifecycle.usage(per_tag=False)
        assert [len(r["tags"]) for r in full["repositories"]] == [2, 2]
        assert [r["tags"] for r in light["repositories"]] == [[], []]
        strip = ("tags",)
        assert [{k: v for k, v in r.items() if k not in strip} for r in light["repositories"]] == [
            {k: v for k, v in r.items() if k not in strip} for r in full["repositories"]
        ]
        one = light["repositories"][0]
        assert one["shared"] == 1000
        assert one["unique"] == 50 + len(json.dumps({"schemaVersion": 2, "repo": "a/one"}))


async def test_tags_are_counted_up_to_a_cap(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> None:
    async with metadata_store(database_url, tmp_path, clock=clock) as store:
        browsing = Registry.create(MemoryDriver(), store).browsing
        names = [f"t{i}" for i in range(7)]
        await store.put_manifest(REPO, _manifest(b'{"schemaVersion":2}'), names)
        assert await browsing.tag_count(REPO) == 7
        assert await browsing.tag_count(REPO, cap=7) == 7
        assert await browsing.tag_count(REPO, cap=5) == 6
        assert await browsing.tag_count("no/such") == 0
