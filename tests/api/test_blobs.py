"""Blob pushes (monolithic, streamed, chunked), pulls, ranges, mounts and deletion."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from tests.helpers.inprocess import digest_of, error_code, push_blob

BAD_DIGESTS = [
    "sha256:abc",
    "sha256:" + "Z" * 64,
    "sha256:" + "A" * 64,
    "md5:" + "a" * 32,
    "nocolon",
    "sha256:" + "a" * 65,
]


async def test_monolithic_push_and_pull(client: httpx.AsyncClient) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = await push_blob(client, "lib/app", data)
    head = await client.head(f"/v2/lib/app/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.content == b""
    r = await client.get(f"/v2/lib/app/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest


async def test_post_then_put_with_body(client: httpx.AsyncClient) -> None:
    data = b"hello world"
    r = await client.post("/v2/repo/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["Range"] == "0-0"
    location = r.headers["Location"]
    assert location.startswith("/v2/repo/blobs/uploads/")
    assert r.headers["Docker-Upload-UUID"] in location
    r = await client.put(location, params={"digest": digest_of(data)}, content=data)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/repo/blobs/{digest_of(data)}"
    assert (await client.get(f"/v2/repo/blobs/{digest_of(data)}")).content == data


async def test_streamed_patch_then_put(client: httpx.AsyncClient) -> None:
    data = os.urandom(2 * 1024 * 1024)
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    r = await client.patch(location, content=data)
    assert r.status_code == 202
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    r = await client.put(r.headers["Location"], params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/repo/blobs/{digest_of(data)}")).content == data


async def test_chunked_upload_with_ranges_and_status(client: httpx.AsyncClient) -> None:
    chunks = [os.urandom(1000), os.urandom(5000), os.urandom(1)]
    data = b"".join(chunks)
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    offset = 0
    for chunk in chunks:
        r = await client.patch(
            location,
            content=chunk,
            headers={
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert r.status_code == 202, r.text
        offset += len(chunk)
        assert r.headers["Range"] == f"0-{offset - 1}"
        status = await client.get(location)
        assert status.status_code == 204
        assert status.headers["Range"] == f"0-{offset - 1}"
        assert "Content-Type" not in status.headers
    r = await client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201
    assert (await client.get(f"/v2/repo/blobs/{digest_of(data)}")).content == data


async def test_out_of_order_chunk_is_416_and_session_survives(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    r = await client.patch(location, content=b"abcd", headers={"Content-Range": "0-3"})
    assert r.status_code == 202
    for bad in ("10-13", "0-3", "2-5"):
        r = await client.patch(location, content=b"efgh", headers={"Content-Range": bad})
        assert r.status_code == 416, bad
        assert error_code(r) == "BLOB_UPLOAD_INVALID"
        assert r.headers["Range"] == "0-3"
    r = await client.patch(location, content=b"efgh", headers={"Content-Range": "4-7"})
    assert r.status_code == 202
    r = await client.put(location, params={"digest": digest_of(b"abcdefgh")})
    assert r.status_code == 201


async def test_malformed_content_range_is_400(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    for bad in ("abc", "5-2", "-1-3"):
        r = await client.patch(location, content=b"xx", headers={"Content-Range": bad})
        assert r.status_code == 400, bad
        assert error_code(r) == "BLOB_UPLOAD_INVALID"
    r = await client.patch(location, content=b"xx", headers={"Content-Range": "0-5"})
    assert r.status_code == 400
    assert error_code(r) == "SIZE_INVALID"
    assert (await client.get(location)).headers["Range"] == "0-0"


async def test_digest_mismatch_stores_nothing(client: httpx.AsyncClient) -> None:
    data = b"the real content"
    wrong = digest_of(b"something else")
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest": wrong}, content=data)
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
    assert (await client.head(f"/v2/repo/blobs/{wrong}")).status_code == 404
    assert (await client.head(f"/v2/repo/blobs/{digest_of(data)}")).status_code == 404

    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=data)
    r = await client.put(location, params={"digest": wrong})
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
    assert (await client.head(f"/v2/repo/blobs/{wrong}")).status_code == 404
    # The failed session is gone.
    assert (await client.get(location)).status_code == 404


@pytest.mark.parametrize("bad", BAD_DIGESTS)
async def test_malformed_digests_are_400(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.get(f"/v2/repo/blobs/{bad}")
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest": bad}, content=b"x")
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    r = await client.put(location, params={"digest": bad}, content=b"x")
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"


async def test_put_without_digest_is_400(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    r = await client.put(location, content=b"x")
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"


async def test_sha512_blob(client: httpx.AsyncClient) -> None:
    data = b"sha512 content"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest-algorithm": "sha512"})
    assert r.status_code == 202
    r = await client.put(r.headers["Location"], params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/repo/blobs/{digest}")).content == data


async def test_unsupported_digest_algorithm(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest-algorithm": "md5"})
    assert r.status_code == 400
    assert error_code(r) == "UNSUPPORTED"


async def test_empty_blob(client: httpx.AsyncClient) -> None:
    digest = digest_of(b"")
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    r = await client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    r = await client.get(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == b""


async def test_unknown_upload_sessions(client: httpx.AsyncClient) -> None:
    for uid in ("not-a-uuid", "0b8f5a36-5f36-4f7b-9d3c-8a3f0e9b1c2d"):
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            r = await client.request(
                method, f"/v2/repo/blobs/uploads/{uid}?digest=sha256:{'a' * 64}"
            )
            assert r.status_code == 404, (method, uid)
            assert error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    # A session belongs to its repository.
    location = (await client.post("/v2/one/blobs/uploads/")).headers["Location"]
    other = location.replace("/v2/one/", "/v2/two/")
    assert (await client.get(other)).status_code == 404


async def test_cancel_upload(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=b"partial")
    assert (await client.delete(location)).status_code == 204
    assert (await client.get(location)).status_code == 404
    assert (await client.delete(location)).status_code == 404


async def test_content_length_shorter_than_body_is_refused(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["Location"]
    r = await client.patch(location, content=b"abcdef", headers={"Content-Range": "0-5"})
    assert r.status_code == 202
    assert (await client.get(location)).headers["Range"] == "0-5"


async def test_range_requests(client: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 40
    digest = await push_blob(client, "repo", data)
    r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=10000-"})
    assert r.status_code == 206
    assert r.content == data[10000:]
    r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert r.content == data[-5:]
    r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=99999-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"


async def test_blob_unknown(client: httpx.AsyncClient) -> None:
    digest = digest_of(b"never pushed")
    r = await client.get(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 404
    assert error_code(r) == "BLOB_UNKNOWN"
    assert (await client.head(f"/v2/repo/blobs/{digest}")).status_code == 404


async def test_blob_is_per_repository(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "one", b"only in one")
    assert (await client.head(f"/v2/two/blobs/{digest}")).status_code == 404


async def test_delete_blob(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "repo", b"doomed")
    await push_blob(client, "other", b"doomed")
    assert (await client.delete(f"/v2/repo/blobs/{digest}")).status_code == 202
    assert (await client.head(f"/v2/repo/blobs/{digest}")).status_code == 404
    assert (await client.head(f"/v2/other/blobs/{digest}")).status_code == 200
    r = await client.delete(f"/v2/repo/blobs/{digest}")
    assert r.status_code == 404
    assert error_code(r) == "BLOB_UNKNOWN"


async def test_mount_from_another_repository(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "src", b"shared layer")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"})
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/dst/blobs/{digest}"
    assert (await client.get(f"/v2/dst/blobs/{digest}")).content == b"shared layer"


async def test_mount_falls_back_to_an_upload(client: httpx.AsyncClient) -> None:
    missing = digest_of(b"nowhere")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": missing, "from": "src"})
    assert r.status_code == 202
    assert "/v2/dst/blobs/uploads/" in r.headers["Location"]
    digest = await push_blob(client, "src", b"in src only")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "nope"})
    assert r.status_code == 202
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "Bad//Name"})
    assert r.status_code == 202


async def test_automatic_mount_without_from(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "src", b"anywhere")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 201


@pytest.mark.parametrize(
    "name", ["Upper", "a//b", "-lead", "trail-", "a/", "x" * 256, "a__-b", "a.-b"]
)
async def test_invalid_repository_names(client: httpx.AsyncClient, name: str) -> None:
    r = await client.post(f"/v2/{name}/blobs/uploads/")
    assert r.status_code == 400, name
    assert error_code(r) == "NAME_INVALID"
