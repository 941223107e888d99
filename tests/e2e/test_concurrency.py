"""Several clients, and several regd processes, at once."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests.helpers.http_api import ApiClient, apush_blob, expect, location, with_digest
from tests.helpers.oci import sha256
from tests.helpers.servers import DistributionServer, RegdFactory, RegdServer, ServerProcess
from tests.helpers.store import check_blob_store, copies_of

pytestmark = pytest.mark.e2e

CLIENTS = 20


def storage_root(server: ServerProcess) -> Path:
    if isinstance(server, DistributionServer):
        return server.root
    assert isinstance(server, RegdServer)
    return server.data_dir


async def push_one_blob_from_many_clients(server: ServerProcess) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = sha256(data)
    results: list[str] = []

    async def one_client(name: str) -> None:
        # Separate clients, so separate connections, as separate machines would have.
        async with httpx.AsyncClient(timeout=120) as client:
            results.append(await apush_blob(client, server.url, name, data))

    async with trio.open_nursery() as nursery:
        for i in range(CLIENTS):
            # Half share one repository, half have one each: both races matter.
            nursery.start_soon(one_client, "e2e/same" if i % 2 else f"e2e/own-{i}")

    assert results == [digest] * CLIENTS
    with ApiClient(server.url) as http:
        assert http.get_blob("e2e/same", digest) == data
        assert http.get_blob("e2e/own-0", digest) == data
    stored = copies_of(storage_root(server), data)
    assert len(stored) == 1, f"expected one stored copy, found: {stored}"
    check_blob_store(storage_root(server))


async def test_concurrent_pushes_of_one_blob(registry_server: ServerProcess) -> None:
    await push_one_blob_from_many_clients(registry_server)


async def test_concurrent_pushes_of_one_blob_through_two_workers(
    regd_factory: RegdFactory, database_url: str | None
) -> None:
    await push_one_blob_from_many_clients(regd_factory(database_url=database_url, workers=2))


async def push_images_concurrently(server: ServerProcess, *, shared_config: bool) -> None:
    pushed: dict[int, tuple[str, bytes]] = {}

    def one_client(i: int) -> None:
        label = None if shared_config else f"client {i}"
        with ApiClient(server.url) as http:
            pushed[i] = http.push_tiny_image(
                "e2e/busy", f"mine-{i}", payload=f"{i}".encode(), label=label
            )
            # Everyone also moves one shared tag: the last write wins, nobody fails.
            http.push_manifest("e2e/busy", "shared", pushed[i][1])

    async with trio.open_nursery() as nursery:
        for i in range(CLIENTS):
            nursery.start_soon(trio.to_thread.run_sync, one_client, i)

    with ApiClient(server.url) as http:
        assert set(http.tags("e2e/busy")) == {f"mine-{i}" for i in range(CLIENTS)} | {"shared"}
        for i, (digest, body) in pushed.items():
            answer = http.get_manifest("e2e/busy", f"mine-{i}")
            assert answer.content == body
            assert answer.headers["docker-content-digest"] == digest
        shared = http.get_manifest("e2e/busy", "shared")
        assert shared.content in {body for _, body in pushed.values()}
    check_blob_store(storage_root(server))


async def test_concurrent_image_pushes_to_one_repository(registry_server: ServerProcess) -> None:
    await push_images_concurrently(registry_server, shared_config=False)


async def test_concurrent_image_pushes_sharing_a_config(regd_server: RegdServer) -> None:
    # Every client uploads the same config blob and at once refers to it from a manifest.
    # Distribution 2.8 loses this race now and then (MANIFEST_BLOB_UNKNOWN for a blob it
    # has just acknowledged), so it runs against regd alone.
    await push_images_concurrently(regd_server, shared_config=True)


def on(server: RegdServer, url: str) -> str:
    """The same upload URL, sent to another regd process."""
    parts = urlsplit(url)
    return f"{server.url}{parts.path}" + (f"?{parts.query}" if parts.query else "")


@pytest.mark.parametrize("shape", ["two-processes", "two-workers"])
async def test_chunked_upload_across_processes(
    regd_factory: RegdFactory, database_url: str | None, tmp_path: Path, shape: str
) -> None:
    shared = tmp_path / "shared-data"
    if shape == "two-processes":
        first = regd_factory(database_url=database_url, data_dir=shared)
        second = regd_factory(database_url=database_url, data_dir=shared)
    else:
        # One address, two worker processes: which one answers is the kernel's choice, so
        # every request goes out on a new connection to give both a chance.
        first = second = regd_factory(database_url=database_url, data_dir=shared, workers=2)
    data = os.urandom(5 * 1024 * 1024 + 3)
    digest = sha256(data)
    bounds = [0, 1024 * 1024, 2 * 1024 * 1024 + 5, 4 * 1024 * 1024, len(data)]

    no_reuse = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=no_reuse) as client:
        answer = await client.post(f"{first.url}/v2/e2e/relay/blobs/uploads/")
        url = location(expect(answer, "start upload", 202))
        servers = [second, first, second, first]
        for server, start, end in zip(servers, bounds, bounds[1:], strict=False):
            answer = await client.patch(
                on(server, url),
                content=data[start:end],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{end - 1}",
                },
            )
            expect(answer, f"chunk {start}-{end - 1} via {server.host}", 202)
            assert answer.headers.get("range") == f"0-{end - 1}"
            url = location(answer)

        status = await client.get(on(first, url))
        expect(status, "upload status", 204)
        assert status.headers.get("range") == f"0-{len(data) - 1}"

        done = await client.put(on(second, with_digest(url, digest)))
        expect(done, "complete upload", 201)
        assert done.headers.get("docker-content-digest") == digest

    for server in (first, second):
        with ApiClient(server.url) as http:
            assert http.get_blob("e2e/relay", digest) == data
    assert len(copies_of(shared, data)) == 1


async def test_out_of_order_chunk_keeps_the_session(regd_server: RegdServer) -> None:
    data = os.urandom(300_000)
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{regd_server.url}/v2/e2e/chunks/blobs/uploads/")
        url = location(expect(answer, "start upload", 202))
        answer = await client.patch(
            url,
            content=data[:100_000],
            headers={"Content-Type": "application/octet-stream", "Content-Range": "0-99999"},
        )
        url = location(expect(answer, "first chunk", 202))
        skipped = await client.patch(
            url,
            content=data[150_000:],
            headers={"Content-Type": "application/octet-stream", "Content-Range": "150000-299999"},
        )
        assert skipped.status_code == 416, skipped.text
        status = await client.get(url)
        expect(status, "status after a refused chunk", 204)
        assert status.headers.get("range") == "0-99999"
        answer = await client.patch(
            url,
            content=data[100_000:],
            headers={"Content-Type": "application/octet-stream", "Content-Range": "100000-299999"},
        )
        url = location(expect(answer, "chunk after the refused one", 202))
        done = await client.put(with_digest(url, sha256(data)))
        expect(done, "complete upload", 201)
