"""Upload sessions continue their digest from the state saved with them: on any process,
without reading back the bytes already stored."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from regd.registry.hashing import ResumableSha256, StateInvalid
from tests.helpers.http_api import ApiClient, expect, location, with_digest
from tests.helpers.servers import RegdFactory
from tests.storage.conformance import pseudo_random


def test_resumable_sha256_matches_hashlib_across_restores() -> None:
    data = os.urandom(300_000)
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(data)), 20))
    hasher = ResumableSha256()
    start = 0
    for cut in [*cuts, len(data)]:
        hasher.update(data[start:cut])
        # A new object from the saved bytes, as another process would make it.
        hasher = ResumableSha256.restore(hasher.export(), cut)
        assert hasher.digest().hex == hashlib.sha256(data[:cut]).hexdigest()
        start = cut
    assert hasher.size == len(data)


def test_digest_does_not_end_the_hash() -> None:
    hasher = ResumableSha256()
    hasher.update(b"abc")
    assert hasher.digest().hex == hashlib.sha256(b"abc").hexdigest()
    hasher.update(b"def")
    assert hasher.digest().hex == hashlib.sha256(b"abcdef").hexdigest()


@pytest.mark.parametrize(
    ("state", "size"),
    [(b"short", 0), (b"\x00" * 112, 1), ("saved", 99), ("saved", 101)],
)
def test_restore_refuses_a_state_of_other_bytes(state: bytes | str, size: int) -> None:
    if state == "saved":
        hasher = ResumableSha256()
        hasher.update(b"x" * 100)
        state = hasher.export()
    assert isinstance(state, bytes)
    with pytest.raises(StateInvalid):
        ResumableSha256.restore(state, size)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.mark.e2e
def test_chunks_on_another_process_do_not_reread_the_upload(
    regd_factory: RegdFactory, tmp_path: Path, database_url: str | None
) -> None:
    """Two processes over one registry; the first receives a chunk, the second the rest.

    The bytes the first stored are then altered on disk: a second process that hashed the
    stored bytes again would find the digest wrong. Continuing from the saved state, it
    accepts the digest of what the client sent."""
    data_dir = tmp_path / "data"
    first = regd_factory(data_dir=data_dir, database_url=database_url)
    second = regd_factory(data_dir=data_dir, database_url=database_url)
    data = pseudo_random(3 * 1024 * 1024 + 5)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cut1, cut2 = 2 * 1024 * 1024 + 3, 3 * 1024 * 1024
    octets = {"Content-Type": "application/octet-stream"}

    with ApiClient(first.url) as a, ApiClient(second.url) as b:
        url = a.start_upload("resume/me")
        answer = a.http.patch(url, content=data[:cut1], headers=octets)
        # A path, not A's absolute URL, so the next requests go to the second process.
        url = path_of(location(expect(answer, "first chunk", 202)))

        upload_id = urlsplit(url).path.rstrip("/").rsplit("/", 1)[1]
        stored = data_dir / f"docker/registry/v2/repositories/resume/me/_uploads/{upload_id}/data"
        assert stored.stat().st_size == cut1
        with open(stored, "r+b") as fh:
            fh.write(bytes([data[0] ^ 0xFF]))

        answer = b.http.patch(
            url,
            content=data[cut1:cut2],
            headers={**octets, "Content-Range": f"{cut1}-{cut2 - 1}"},
        )
        url = path_of(location(expect(answer, "second chunk", 202)))
        assert url.startswith("/")
        answer = b.http.put(with_digest(url, digest), content=data[cut2:], headers=octets)
        expect(answer, "last chunk", 201)
        # The blob holds the altered bytes: the digest was never taken from them.
        assert a.get_blob("resume/me", digest)[0] != data[0]
