"""A usage report is seconds of CPU on a large registry: while one is computed, the same
regd process keeps answering other requests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
import trio

from regd.metadata import MetadataStore, sqlite_url
from tests.helpers.servers import RegdFactory
from tests.helpers.store import new_manifest

pytestmark = pytest.mark.e2e

REPO = "big/app"
CHILDREN = 100
BLOBS_PER_CHILD = 2
# Every tag on one index of CHILDREN images: each tag's figures walk the whole index.
TAGS = 5_000
# Server CPU seconds past which the report is surely in its computation (reading the
# rows of this registry takes a few hundredths of that).
COMPUTING_CPU = 0.3
# Requests that must all be answered while the report is computed.
ANSWERS = 5
DEADLINE = 120.0

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _seed(database: Path) -> None:
    """The rows of a registry with many tags on a wide index (no blob bytes needed)."""
    store = MetadataStore(sqlite_url(database))
    store.create_schema()
    try:
        children = []
        for i in range(CHILDREN):
            blobs = [_digest(f"blob {i} {k}".encode()) for k in range(BLOBS_PER_CHILD)]
            for k, blob in enumerate(blobs):
                await store.link_blob(REPO, blob, 1_000_000 + i * BLOBS_PER_CHILD + k)
            child = new_manifest(f'{{"image":{i}}}'.encode(), blobs=blobs)
            await store.put_manifest(REPO, child, [])
            children.append(child.digest)
        index = new_manifest(b'{"index":0}', OCI_INDEX, children=children)
        await store.put_manifest(REPO, index, [f"v{n:06d}" for n in range(TAGS)])
    finally:
        await store.aclose()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_requests_are_answered_while_usage_is_computed(
    regd_factory: RegdFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    await _seed(data_dir / "regd.db")
    server = regd_factory(data_dir=data_dir, workers=1)
    pid = server.process.pid
    order: list[str] = []

    async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as http:
        assert (await http.get("/v2/")).status_code == 200

        async def usage() -> None:
            # Every repository's figures are computed whichever is asked for; asking for
            # one that does not exist keeps the answer small, so that once the work is
            # done the answer follows at once.
            r = await http.get("/admin/v1/usage", params={"repository": "absent"})
            assert r.status_code == 200, r.text
            assert r.json()["repositories"] == []
            order.append("usage")

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                before = _cpu_seconds(pid)
                nursery.start_soon(usage)
                while _cpu_seconds(pid) - before < COMPUTING_CPU:
                    assert not order, "the report was done before the test could look"
                    await trio.sleep(0.01)
                for _ in range(ANSWERS):
                    assert (await http.get("/v2/")).status_code == 200
                    order.append("v2")
    assert order == ["v2"] * ANSWERS + ["usage"], order
