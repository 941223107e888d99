"""regd killed with SIGKILL in the middle of a large upload loses nothing it acknowledged and
never shows a blob under a digest its bytes do not have."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.clients import Skopeo
from tests.helpers.http_api import (
    ApiClient,
    expect,
    location,
    pattern_digest,
    pattern_stream,
    with_digest,
)
from tests.helpers.oci import Layout, LayoutImage
from tests.helpers.servers import RegdServer
from tests.helpers.store import check_blob_store

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
BIG = 200 * MiB
ACKNOWLEDGED = 64 * MiB  # sent as a first chunk that regd answers before the crash
KILL_AT = 130 * MiB  # position in the second chunk at which regd is killed
PATTERN = b"regd kill -9 test pattern\n"


async def stream_patch(
    client: httpx.AsyncClient, url: str, start: int, end: int, *, ranged: bool
) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"}
    if ranged:
        headers["Content-Range"] = f"{start}-{end - 1}"
        headers["Content-Length"] = str(end - start)
    return await client.patch(url, content=pattern_stream(PATTERN, start, end), headers=headers)


async def full_push(client: httpx.AsyncClient, base: str, name: str, digest: str) -> None:
    started = expect(await client.post(f"{base}/v2/{name}/blobs/uploads/"), "start upload", 202)
    patched = await stream_patch(client, location(started), 0, BIG, ranged=False)
    expect(patched, "stream the whole blob", 202)
    done = await client.put(with_digest(location(patched), digest))
    expect(done, "complete the upload", 201)


@pytest.fixture
def regd_server(regd_server: RegdServer) -> Iterator[RegdServer]:
    """The shared fixture, plus removal of the hundreds of MiB these tests leave behind
    (pytest keeps the temporary folders of the last few runs)."""
    yield regd_server
    regd_server.stop()
    shutil.rmtree(regd_server.data_dir, ignore_errors=True)


async def interrupt_an_upload(regd_server: RegdServer, name: str) -> str:
    """Acknowledge the first ACKNOWLEDGED bytes of an upload, SIGKILL regd in the middle of
    the next chunk, restart it; returns the session's URL."""
    async with httpx.AsyncClient(timeout=120) as client:
        answer = await client.post(f"{regd_server.url}/v2/{name}/blobs/uploads/")
        started = expect(answer, "start upload", 202)
        first = await stream_patch(client, location(started), 0, ACKNOWLEDGED, ranged=True)
        expect(first, "first chunk", 202)
        assert first.headers.get("range") == f"0-{ACKNOWLEDGED - 1}"
        session = location(first)

    killed = False

    async def body_then_kill() -> AsyncIterator[bytes]:
        # The kill happens in-band, at a fixed byte position, so no timing is involved.
        nonlocal killed
        position = ACKNOWLEDGED
        async for piece in pattern_stream(PATTERN, ACKNOWLEDGED, BIG):
            yield piece
            position += len(piece)
            if not killed and position >= KILL_AT:
                regd_server.kill9()
                killed = True

    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient(timeout=120) as doomed:
            await doomed.patch(
                session,
                content=body_then_kill(),
                headers={"Content-Type": "application/octet-stream"},
            )
    assert killed, "the upload finished before regd could be killed"
    regd_server.restart()
    return session


async def test_kill9_during_a_large_upload(
    regd_server: RegdServer, skopeo: Skopeo, oci_image: LayoutImage, tmp_path: Path
) -> None:
    base, name = regd_server.url, "e2e/big"
    digest = pattern_digest(PATTERN, BIG)

    # Acknowledged before the crash: these must survive it.
    skopeo.copy(oci_image.ref, f"docker://{regd_server.host}/e2e/before:v1")
    with ApiClient(base) as registry:
        tiny_digest, tiny = registry.push_tiny_image("e2e/before", "tiny", payload=b"tiny layer")

    session = await interrupt_an_upload(regd_server, name)

    async with httpx.AsyncClient(timeout=120) as client:
        head = await client.head(f"{base}/v2/{name}/blobs/{digest}")
        assert head.status_code == 404, f"incomplete blob visible: {head.status_code}"
        check_blob_store(regd_server.data_dir)

        # A surviving session keeps at least what was acknowledged; it may keep more of the
        # killed chunk (the resume test checks those bytes), but never more than was sent.
        status = await client.get(session)
        assert status.status_code in (204, 404), status.text
        if status.status_code == 204:
            last = int(status.headers["range"].split("-")[1])
            assert ACKNOWLEDGED - 1 <= last < KILL_AT

        await full_push(client, base, name, digest)
        head = await client.head(f"{base}/v2/{name}/blobs/{digest}")
        expect(head, "blob after re-push", 200)
        assert int(head.headers["content-length"]) == BIG
        h = hashlib.sha256()
        async with client.stream("GET", f"{base}/v2/{name}/blobs/{digest}") as answer:
            expect(answer, "download the blob", 200)
            async for piece in answer.aiter_bytes():
                h.update(piece)
        assert "sha256:" + h.hexdigest() == digest

    assert check_blob_store(regd_server.data_dir) > 0
    with ApiClient(base) as registry:
        assert registry.get_manifest("e2e/before", "tiny").content == tiny
        assert registry.get_manifest("e2e/before", tiny_digest).content == tiny
    skopeo.copy(f"docker://{regd_server.host}/e2e/before:v1", f"oci:{tmp_path / 'back'}:v1")
    assert Layout(tmp_path / "back").resolve("v1")["digest"] == oci_image.digest


async def test_interrupted_session_resumes_after_restart(regd_server: RegdServer) -> None:
    name = "e2e/resumed"
    digest = pattern_digest(PATTERN, BIG)
    session = await interrupt_an_upload(regd_server, name)

    async with httpx.AsyncClient(timeout=120) as client:
        status = await client.get(session)
        expect(status, "status of the interrupted session", 204)
        resume_from = int(status.headers["range"].split("-")[1]) + 1
        assert ACKNOWLEDGED <= resume_from <= KILL_AT
        # Finishing the session proves that the bytes it kept are the ones that were sent.
        rest = await stream_patch(client, session, resume_from, BIG, ranged=True)
        expect(rest, f"resume the interrupted session at {resume_from}", 202)
        done = await client.put(with_digest(location(rest), digest))
        expect(done, "complete the interrupted session", 201)
        assert done.headers.get("docker-content-digest") == digest
    check_blob_store(regd_server.data_dir)
