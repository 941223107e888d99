"""Tag lists and the catalog: lexical order, `n`/`last` paging and `Link` headers."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers.inprocess import error_code, image_manifest, push_blob

TAGS = ["v1", "V2", "a", "b-1", "b.1", "b_1", "latest", "_x", "z" * 128, "0"]


async def tag_many(client: httpx.AsyncClient, repo: str, tags: list[str]) -> None:
    config = await push_blob(client, repo, b"{}")
    payload = image_manifest((config, 2), [])
    for tag in tags:
        r = await client.put(
            f"/v2/{repo}/manifests/{tag}",
            content=payload,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 201


async def test_tags_are_sorted_bytewise(client: httpx.AsyncClient) -> None:
    await tag_many(client, "app", TAGS)
    r = await client.get("/v2/app/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": "app", "tags": sorted(TAGS)}
    assert "Link" not in r.headers


async def test_tags_paging_follows_links(client: httpx.AsyncClient) -> None:
    await tag_many(client, "app", TAGS)
    seen: list[str] = []
    url = "/v2/app/tags/list?n=3"
    for _ in range(10):
        r = await client.get(url)
        page = r.json()["tags"]
        assert len(page) <= 3
        seen += page
        link = r.headers.get("Link")
        if not link:
            break
        assert link.endswith('>; rel="next"')
        url = link[1 : link.index(">")]
    assert seen == sorted(TAGS)


async def test_tags_n_and_last(client: httpx.AsyncClient) -> None:
    await tag_many(client, "app", TAGS)
    ordered = sorted(TAGS)
    r = await client.get("/v2/app/tags/list", params={"n": 2, "last": ordered[3]})
    assert r.json()["tags"] == ordered[4:6]
    r = await client.get("/v2/app/tags/list", params={"n": 0})
    assert r.json()["tags"] == []
    r = await client.get("/v2/app/tags/list", params={"n": 100})
    assert r.json()["tags"] == ordered
    assert "Link" not in r.headers
    r = await client.get("/v2/app/tags/list", params={"last": ordered[-1]})
    assert r.json()["tags"] == []


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "99999999999"])
async def test_bad_page_size(client: httpx.AsyncClient, n: str) -> None:
    await tag_many(client, "app", ["v1"])
    r = await client.get("/v2/app/tags/list", params={"n": n})
    assert r.status_code == 400
    assert error_code(r) == "UNSUPPORTED"


async def test_tags_of_unknown_repository(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/nothing/tags/list")
    assert r.status_code == 404
    assert error_code(r) == "NAME_UNKNOWN"
    r = await client.get("/v2/nothing/tags/list?n=0")
    assert r.status_code == 404


async def test_catalog(client: httpx.AsyncClient) -> None:
    names = ["b/c", "a", "a-b", "a/b", "z", "a.b", "a_b"]
    for name in names:
        await push_blob(client, name, json.dumps(name).encode())
    r = await client.get("/v2/_catalog")
    assert r.json() == {"repositories": sorted(names)}
    seen: list[str] = []
    url = "/v2/_catalog?n=2"
    for _ in range(10):
        r = await client.get(url)
        seen += r.json()["repositories"]
        if "Link" not in r.headers:
            break
        url = r.headers["Link"][1 : r.headers["Link"].index(">")]
    assert seen == sorted(names)
    assert (await client.get("/v2/_catalog?n=0")).json() == {"repositories": []}
    r = await client.get("/v2/_catalog?n=x")
    assert r.status_code == 400


async def test_empty_catalog(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/_catalog")).json() == {"repositories": []}
