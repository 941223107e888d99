"""The cap on open upload sessions per repository (POSTs that open a session)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from regd.app import create_app
from regd.config import Config
from regd.errors import ConfigError, TooManyRequests
from regd.metadata import MetadataStore, sqlite_url
from regd.registry import Registry, Uploads
from regd.storage import FilesystemDriver
from tests.conftest import RegdFactory

CAP = 5


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def uploads(tmp_path: Path, store: MetadataStore) -> Uploads:
    return Uploads(FilesystemDriver(tmp_path / "blobs"), store, max_uploads_per_repository=CAP)


async def test_the_session_past_the_cap_is_refused(uploads: Uploads) -> None:
    sessions = [await uploads.start("repo") for _ in range(CAP)]
    with pytest.raises(TooManyRequests) as refused:
        await uploads.start("repo")
    assert refused.value.code == "TOOMANYREQUESTS"
    assert "repo" in refused.value.message
    # The cap is per repository.
    await uploads.start("other")
    # Cancelling one frees a slot, for one session only.
    await uploads.cancel("repo", sessions[0].id)
    await uploads.start("repo")
    with pytest.raises(TooManyRequests):
        await uploads.start("repo")


async def test_completed_uploads_do_not_count(uploads: Uploads) -> None:
    for i in range(CAP + 2):
        data = f"blob {i}".encode()
        session = await uploads.start("repo")
        await uploads.append("repo", session.id, body(data[:3]))
        await uploads.finish("repo", session.id, sha256(data), body(data[3:]))
    # Nor do whole blobs POSTed with their digest, which never open a session.
    for i in range(CAP + 2):
        data = f"whole {i}".encode()
        await uploads.monolithic("repo", sha256(data), body(data), len(data))
    for _ in range(CAP):
        await uploads.start("repo")


async def test_a_wrong_digest_ends_the_session_and_frees_its_slot(uploads: Uploads) -> None:
    sessions = [await uploads.start("repo") for _ in range(CAP)]
    with pytest.raises(Exception, match="hashes to"):
        await uploads.finish("repo", sessions[0].id, sha256(b"claimed"), body(b"actual"))
    await uploads.start("repo")


def test_the_cap_must_allow_a_session(tmp_path: Path) -> None:
    store = MetadataStore(sqlite_url(tmp_path / "m.db"))
    with pytest.raises(ConfigError, match="max_uploads_per_repository"):
        Uploads(FilesystemDriver(tmp_path), store, max_uploads_per_repository=0)


def test_sessions_are_counted_by_an_index(tmp_path: Path, database_url: str | None) -> None:
    """Counting must not scan every session; a database made before the index gets it."""
    store = MetadataStore(database_url or sqlite_url(tmp_path / "m.db"))
    store.create_schema()
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX uploads_repository"))
    store.create_schema()
    indexes = sa.inspect(store.engine).get_indexes("uploads")
    assert [i["column_names"] for i in indexes if i["name"] == "uploads_repository"] == [
        ["repository"]
    ]
    store.engine.dispose()


# -- through the API -------------------------------------------------------------------


@pytest.fixture
async def capped(tmp_path: Path, store: MetadataStore) -> AsyncIterator[httpx.AsyncClient]:
    reg = Registry.create(
        FilesystemDriver(tmp_path / "blobs"), store, max_uploads_per_repository=CAP
    )
    app = create_app(reg, Config(access_log=False, upload_purge_interval=0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as c:
        yield c


async def test_every_post_that_opens_a_session_is_capped(capped: httpx.AsyncClient) -> None:
    locations = []
    for _ in range(CAP - 1):
        r = await capped.post("/v2/app/blobs/uploads/")
        assert r.status_code == 202
        locations.append(r.headers["Location"])
    # A mount of a blob that is not there falls back to opening a session: the last slot.
    missing = sha256(b"nowhere")
    r = await capped.post("/v2/app/blobs/uploads/", params={"mount": missing, "from": "x"})
    assert r.status_code == 202
    for params in ({}, {"mount": missing, "from": "x"}):
        r = await capped.post("/v2/app/blobs/uploads/", params=params)
        assert r.status_code == 429
        assert r.headers["retry-after"].isdigit()
        assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    # A blob POSTed whole completes in its request and holds no session: not refused.
    data = b"whole"
    r = await capped.post("/v2/app/blobs/uploads/", params={"digest": sha256(data)}, content=data)
    assert r.status_code == 201
    assert (await capped.delete(locations[0])).status_code == 204
    assert (await capped.post("/v2/app/blobs/uploads/")).status_code == 202


# -- a real server ---------------------------------------------------------------------


@pytest.mark.e2e
def test_a_real_server_caps_sessions_across_its_workers(
    regd_factory: RegdFactory, database_url: str | None
) -> None:
    """Two worker processes share the count; the configured cap holds on the real server."""
    server = regd_factory(
        database_url=database_url, workers=2, env={"REGD_MAX_UPLOADS_PER_REPOSITORY": str(CAP)}
    )
    with httpx.Client(base_url=server.url, timeout=30) as client:
        locations = []
        for _ in range(CAP):
            r = client.post("/v2/app/blobs/uploads/")
            assert r.status_code == 202, r.text
            locations.append(r.headers["Location"])
        r = client.post("/v2/app/blobs/uploads/")
        assert r.status_code == 429, r.text
        assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS", r.text
        assert client.post("/v2/other/blobs/uploads/").status_code == 202
        # Completing a session frees its slot; so does cancelling one.
        data = b"completed"
        r = client.put(locations[0], params={"digest": sha256(data)}, content=data)
        assert r.status_code == 201, r.text
        assert client.post("/v2/app/blobs/uploads/").status_code == 202
        assert client.delete(locations[1]).status_code == 204
        assert client.post("/v2/app/blobs/uploads/").status_code == 202
        assert client.post("/v2/app/blobs/uploads/").json()["errors"][0]["code"] == (
            "TOOMANYREQUESTS"
        )
