"""Storage quotas against a real regd, on SQLite and PostgreSQL: a push that would take a
group of repositories past its limit is refused 403 DENIED with nothing stored, before its
bytes arrive where their size is announced and at manifest push otherwise; `regctl du` shows
each group's usage against its limit, counted as the refusals count it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.http_api import ApiClient, location, with_digest
from tests.helpers.oci import sha256
from tests.helpers.servers import RegdServer
from tests.quota.conftest import Cli, regd_env, start_regd, stored_files

KiB = 1024
LIMIT = 64 * KiB
QUOTAS = [
    {"repositories": "mono/**", "limit": "64KiB"},
    {"repositories": "chunk/**", "limit": LIMIT},
    {"repositories": "late/*", "limit": "64 KiB"},
    {"repositories": "du/**", "limit": "1MiB"},
    {"repositories": "room/**", "limit": "64KiB"},
]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_database: str | None
) -> Iterator[RegdServer]:
    scratch = tmp_path_factory.mktemp("quota")
    regd = RegdServer(
        data_dir=scratch / "data",
        database_url=module_database,
        scratch=scratch,
        env=regd_env(quota=QUOTAS),
    )
    start_regd(regd)
    yield regd
    regd.stop()


@pytest.fixture
def api(server: RegdServer) -> Iterator[ApiClient]:
    with ApiClient(server.url) as client:
        yield client


def refusal(answer: httpx.Response, quota: str) -> dict[str, Any]:
    assert answer.status_code == 403, answer.text
    error: dict[str, Any] = answer.json()["errors"][0]
    assert error["code"] == "DENIED"
    assert f"quota {quota} is " in error["message"]
    assert " is used and this push needs " in error["message"]
    assert error["detail"]["quota"] == quota
    return error


def image_bytes(api: ApiClient, name: str, tag: str) -> int:
    """What a pushed image adds to its repository, counted as du counts it."""
    body = api.get_manifest(name, tag).content
    doc = json.loads(body)
    return len(body) + doc["config"]["size"] + sum(layer["size"] for layer in doc["layers"])


def quota_usage(cli: Cli, host: str, quota: str) -> int:
    r = cli("du", host, "--json")
    assert r.code == 0, r.err
    entry = next(q for q in r.json()["quotas"] if q["repositories"] == quota)
    used: int = entry["used_bytes"]
    return used


def streamed(data: bytes) -> Iterator[bytes]:
    """A body with no Content-Length (chunked): its size is unknown until it has arrived."""
    for start in range(0, len(data), 4096):
        yield data[start : start + 4096]


def test_monolithic_blob_over_quota_is_refused_before_it_is_stored(
    server: RegdServer, api: ApiClient, cli: Cli
) -> None:
    layer = os.urandom(40 * KiB)
    api.push_tiny_image("mono/a", "v1", payload=layer)
    used = image_bytes(api, "mono/a", "v1")
    assert quota_usage(cli, server.host, "mono/**") == used
    before = stored_files(server.data_dir)

    big = os.urandom(30 * KiB)
    digest = sha256(big)
    # POST with ?digest= and the whole body.
    answer = api.http.post(f"/v2/mono/a/blobs/uploads/?digest={digest}", content=big)
    error = refusal(answer, "mono/**")
    assert error["detail"] == {"quota": "mono/**", "limit": LIMIT, "used": used, "needed": len(big)}
    # PUT of a new session with the whole body, in another repository of the group.
    url = api.start_upload("mono/b")
    refusal(api.http.put(with_digest(url, digest), content=big), "mono/**")

    assert stored_files(server.data_dir) == before
    for name in ("mono/a", "mono/b"):
        assert api.http.head(f"/v2/{name}/blobs/{digest}").status_code == 404
    # A blob the group holds already costs nothing more: the same image in another repository
    # of the group fits, though its bytes alone would not.
    api.push_tiny_image("mono/b", "v1", payload=layer)
    manifest = len(api.get_manifest("mono/b", "v1").content)
    assert quota_usage(cli, server.host, "mono/**") == used + manifest
    # Outside the group nothing is counted against it.
    api.push_tiny_image("other", "v1", payload=big)


def test_chunks_over_quota_are_refused_and_the_session_stays_usable(
    server: RegdServer, api: ApiClient
) -> None:
    api.push_tiny_image("chunk/a", "v1", payload=os.urandom(40 * KiB))
    first, second = os.urandom(10 * KiB), os.urandom(20 * KiB)
    url = api.start_upload("chunk/b")
    answer = api.http.patch(url, content=first, headers={"Content-Range": f"0-{len(first) - 1}"})
    assert answer.status_code == 202, answer.text
    url = location(answer)
    before = stored_files(server.data_dir)

    end = len(first) + len(second) - 1
    answer = api.http.patch(url, content=second, headers={"Content-Range": f"{len(first)}-{end}"})
    error = refusal(answer, "chunk/**")
    assert error["detail"]["used"] > 0
    assert error["detail"]["needed"] == len(first) + len(second)
    # The last chunk with the PUT that completes the upload, without a Content-Range.
    refusal(api.http.put(with_digest(url, sha256(first + second)), content=second), "chunk/**")
    assert stored_files(server.data_dir) == before

    status = api.http.get(url)
    assert status.status_code == 204
    assert status.headers["range"] == f"0-{len(first) - 1}"
    done = api.http.put(with_digest(url, sha256(first)), content=b"")
    assert done.status_code == 201, done.text


def test_manifest_over_quota_is_refused_when_blob_sizes_were_unknown(
    server: RegdServer, api: ApiClient, cli: Cli
) -> None:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layers = [os.urandom(40 * KiB), os.urandom(40 * KiB)]
    for data in [config, *layers]:
        # No Content-Length: each blob is taken, since its size cannot be judged beforehand.
        answer = api.http.post(
            f"/v2/late/app/blobs/uploads/?digest={sha256(data)}", content=streamed(data)
        )
        assert answer.status_code == 201, answer.text

    def manifest(parts: list[bytes]) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(data),
                    "size": len(data),
                }
                for data in parts
            ],
        }
        return json.dumps(doc).encode()

    both = manifest(layers)
    answer = api.http.put(
        "/v2/late/app/manifests/v1", content=both, headers={"Content-Type": OCI_MANIFEST}
    )
    error = refusal(answer, "late/*")
    assert error["detail"]["used"] == 0
    assert error["detail"]["needed"] == len(config) + 2 * 40 * KiB + len(both)
    assert api.http.get(f"/v2/late/app/manifests/{sha256(both)}").status_code == 404
    assert api.http.get("/v2/late/app/manifests/v1").status_code == 404
    assert quota_usage(cli, server.host, "late/*") == 0

    one = manifest(layers[:1])
    api.push_manifest("late/app", "v1", one)
    assert quota_usage(cli, server.host, "late/*") == len(config) + 40 * KiB + len(one)


def test_du_shows_usage_against_quota_with_shared_blobs_counted_once(
    server: RegdServer, api: ApiClient, cli: Cli
) -> None:
    shared = os.urandom(8 * KiB)
    api.push_tiny_image("du/one", "v1", payload=shared)
    api.push_tiny_image("du/two", "v1", payload=shared, label="two")
    r = cli("du", server.host, "--json")
    assert r.code == 0, r.err
    usage = r.json()
    repos = {repo["name"]: repo for repo in usage["repositories"]}
    entry = next(q for q in usage["quotas"] if q["repositories"] == "du/**")
    assert entry["limit_bytes"] == 1024 * KiB
    assert entry["repository_count"] == 2
    # Each repository's du counts the layer; the group holds it once.
    assert entry["used_bytes"] == repos["du/one"]["size"] + repos["du/two"]["size"] - len(shared)

    human = cli("du", server.host)
    assert human.code == 0, human.err
    row = next(line for line in human.out.splitlines() if line.startswith("du/**"))
    assert row.split()[1:] == [
        *f"{entry['used_bytes'] / 1024:.1f} KiB".split(),
        "1.0",
        "MiB",
        f"{100 * entry['used_bytes'] / (1024 * KiB):.1f}",
        "%",
        "2",
    ]
    one = cli("du", f"{server.host}/du/one", "--json")
    assert one.code == 0, one.err
    assert [q["repositories"] for q in one.json()["quotas"]] == ["du/**"]


def test_deleting_an_image_makes_room_at_once(server: RegdServer, api: ApiClient) -> None:
    digest, _ = api.push_tiny_image("room/a", "v1", payload=os.urandom(40 * KiB))
    layer = os.urandom(40 * KiB)
    over = api.http.post(f"/v2/room/b/blobs/uploads/?digest={sha256(layer)}", content=layer)
    refusal(over, "room/**")
    assert api.http.delete(f"/v2/room/a/manifests/{digest}").status_code == 202
    # No longer held by a manifest, the first layer is not counted, collected or not.
    api.push_tiny_image("room/b", "v1", payload=layer)
