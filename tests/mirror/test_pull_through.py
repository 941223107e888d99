"""Pulling through regd's pull-through cache from a real upstream (Distribution 2.8), with
real clients: digests as the upstream's, one upstream fetch per blob however many clients
ask at once, nothing partial kept from a broken transfer, stale tags while the upstream is
down, pushes into a mirror refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_auth_clients import Containerd
from tests.helpers.clients import Podman, Skopeo
from tests.helpers.http_api import MANIFEST_ACCEPT, ApiClient, manifests_in
from tests.helpers.oci import LayoutImage
from tests.helpers.servers import RegdServer
from tests.mirror.conftest import Upstream, mirror_table, poll, seed, start_regd, start_upstream

CLIENTS = 20


@pytest.fixture(scope="module")
def upstream(module_scratch: Path) -> Iterator[Upstream]:
    server = start_upstream(module_scratch / "upstream")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def regd(module_scratch: Path, upstream: Upstream) -> Iterator[RegdServer]:
    server = start_regd(
        module_scratch / "regd",
        mirror_table("up", upstream.url, manifest_ttl="1s", timeout="10s"),
    )
    yield server
    server.stop()


def _manifest(base: str, name: str, reference: str) -> httpx.Response:
    return httpx.get(
        f"{base}/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}, timeout=60
    )


def _blobs_of(base: str, name: str, reference: str) -> list[str]:
    """Every blob an image or index needs, read from the manifests at `base`."""
    answer = _manifest(base, name, reference)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    if "manifests" in doc:
        return [d for m in manifests_in(answer.content) for d in _blobs_of(base, name, m["digest"])]
    return [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]


def test_skopeo_pulls_the_upstreams_bytes_and_a_warm_pull_stays_home(
    regd: RegdServer, upstream: Upstream, skopeo: Skopeo, small_image: LayoutImage, tmp_path: Path
) -> None:
    seed(skopeo, small_image, upstream, "lib/app:v1")
    direct = skopeo.inspect_raw(f"docker://{upstream.host}/lib/app:v1")
    through = skopeo.inspect_raw(f"docker://{regd.host}/up/lib/app:v1")
    assert through == direct

    skopeo.copy(f"docker://{regd.host}/up/lib/app:v1", f"oci:{tmp_path / 'out'}:v1")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == small_image.digest
    blobs = _blobs_of(upstream.url, "lib/app", "v1")
    assert {d: upstream.blob_gets(d) for d in blobs} == dict.fromkeys(blobs, 1)

    skopeo.copy(f"docker://{regd.host}/up/lib/app:v1", f"oci:{tmp_path / 'again'}:v1")
    assert {d: upstream.blob_gets(d) for d in blobs} == dict.fromkeys(blobs, 1)


def test_pushes_into_a_mirror_are_refused_and_other_names_take_them(regd: RegdServer) -> None:
    with ApiClient(regd.url) as api:
        refused = api.http.post("/v2/up/lib/mine/blobs/uploads/")
        assert refused.status_code == 403
        error = refused.json()["errors"][0]
        assert error["code"] == "DENIED"
        assert "mirror up" in error["message"]
        manifest = api.http.put(
            "/v2/up/lib/mine/manifests/v1",
            content=b"{}",
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert manifest.status_code == 403
        digest, _ = api.push_tiny_image("local/app", "v1", payload=b"pushed here")
        assert api.get_manifest("local/app", "v1").headers["docker-content-digest"] == digest


def _pull_everything(base: str, name: str, tag: str) -> dict[str, str]:
    """What one client does: the index, each platform's manifest, each blob (digest checked)."""
    seen: dict[str, str] = {}
    with httpx.Client(base_url=base, timeout=120) as http:
        index = http.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        assert index.status_code == 200, index.text
        seen[tag] = index.headers["docker-content-digest"]
        for entry in manifests_in(index.content):
            answer = http.get(
                f"/v2/{name}/manifests/{entry['digest']}", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert answer.status_code == 200, answer.text
            doc = answer.json()
            for digest in [doc["config"]["digest"], *(x["digest"] for x in doc["layers"])]:
                h = hashlib.sha256()
                with http.stream("GET", f"/v2/{name}/blobs/{digest}") as blob:
                    assert blob.status_code == 200, blob.read()
                    for chunk in blob.iter_bytes():
                        h.update(chunk)
                seen[digest] = "sha256:" + h.hexdigest()
    return seen


def test_twenty_cold_pulls_fetch_each_blob_once(
    regd: RegdServer, upstream: Upstream, skopeo: Skopeo, multi_image: LayoutImage
) -> None:
    seed(skopeo, multi_image, upstream, "lib/multi:v1")
    blobs = set(_blobs_of(upstream.url, "lib/multi", "v1"))
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(
            pool.map(lambda _: _pull_everything(regd.url, "up/lib/multi", "v1"), range(CLIENTS))
        )
    for seen in results:
        assert seen["v1"] == multi_image.digest
        assert all(seen[d] == d for d in blobs)
    assert {d: upstream.blob_gets(d) for d in blobs} == dict.fromkeys(blobs, 1)


def _pattern(size: int) -> Iterator[bytes]:
    block = hashlib.sha256(b"mirror").digest() * (1 << 15)  # 1 MiB
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


def _push_big(upstream: Upstream, name: str, size: int) -> str:
    h = hashlib.sha256()
    for piece in _pattern(size):
        h.update(piece)
    digest = "sha256:" + h.hexdigest()
    with httpx.Client(base_url=upstream.url, timeout=120) as http:
        start = http.post(f"/v2/{name}/blobs/uploads/")
        assert start.status_code == 202
        url = httpx.URL(upstream.url).join(start.headers["location"])
        done = http.put(
            str(url.copy_merge_params({"digest": digest})),
            content=_pattern(size),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
    return digest


def _drain(chunks: Iterator[bytes]) -> int:
    return sum(len(chunk) for chunk in chunks)


def test_upstream_killed_mid_blob_leaves_nothing_and_the_next_pull_succeeds(
    regd: RegdServer, upstream: Upstream
) -> None:
    size = 32 << 20
    digest = _push_big(upstream, "lib/big", size)
    url = f"{regd.url}/v2/up/lib/big/blobs/{digest}"
    received = 0
    try:
        with httpx.Client(timeout=60) as http, http.stream("GET", url) as answer:
            assert answer.status_code == 200
            assert int(answer.headers["content-length"]) == size
            chunks = answer.iter_raw()
            received += len(next(chunks))
            # The first client holds the fill back (regd hands it a few chunks at a time),
            # so the upstream dies with most of the blob still to send.
            upstream.kill9()
            with pytest.raises(httpx.HTTPError):
                received += _drain(chunks)
        assert received < size

        def refused() -> bool:
            # Until the fill has failed a request may still wait for it; after, regd asks
            # the upstream (down) again: a 503 that names it, never the partial bytes.
            answer = httpx.get(url, timeout=60)
            assert answer.status_code in (503,), answer.status_code
            return "upstream" in answer.text

        poll(refused, "a refusal naming the upstream")
        head = httpx.head(url, timeout=60)
        assert head.status_code == 503
    finally:
        upstream.start()

    h = hashlib.sha256()
    with httpx.Client(timeout=120) as http, http.stream("GET", url) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_bytes():
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == digest


def test_cached_tag_is_served_stale_while_the_upstream_is_down(
    regd: RegdServer, upstream: Upstream, skopeo: Skopeo, small_image: LayoutImage
) -> None:
    seed(skopeo, small_image, upstream, "lib/stale:v1")
    fresh = _manifest(regd.url, "up/lib/stale", "v1")
    assert fresh.status_code == 200
    assert "warning" not in fresh.headers
    upstream.stop()
    try:

        def stale() -> httpx.Response | None:
            answer = _manifest(regd.url, "up/lib/stale", "v1")
            assert answer.status_code == 200, answer.text
            return answer if "warning" in answer.headers else None

        answer = poll(stale, "the manifest's TTL to pass")
        assert answer.content == fresh.content
        assert answer.headers["warning"].startswith('110 regd "Response is Stale')
        uncached = _manifest(regd.url, "up/lib/stale", "never-pulled")
        assert uncached.status_code == 503
        assert f"upstream {upstream.url}" in uncached.json()["errors"][0]["message"]
    finally:
        upstream.start()


def test_a_tag_moved_upstream_is_seen_after_the_ttl(regd: RegdServer, upstream: Upstream) -> None:
    with ApiClient(upstream.url) as api:
        first, _ = api.push_tiny_image("lib/moving", "v1", payload=b"first", label="1")
        assert _manifest(regd.url, "up/lib/moving", "v1").headers["docker-content-digest"] == first
        second, _ = api.push_tiny_image("lib/moving", "v1", payload=b"second", label="2")
    poll(
        lambda: (
            _manifest(regd.url, "up/lib/moving", "v1").headers["docker-content-digest"] == second
        ),
        "the moved tag",
    )


def test_podman_pulls_through_a_registries_conf_mirror(
    regd: RegdServer,
    upstream: Upstream,
    skopeo: Skopeo,
    small_image: LayoutImage,
    podman: Podman,
) -> None:
    seed(skopeo, small_image, upstream, "lib/podman:v1")
    # The image's own registry does not exist: only the mirror entry can serve the pull.
    podman.registries.write_text(
        'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
        '[[registry]]\nprefix = "mirror-test.invalid"\nlocation = "mirror-test.invalid"\n'
        f'[[registry.mirror]]\nlocation = "{regd.host}/up"\ninsecure = true\n'
    )
    podman("pull", "mirror-test.invalid/lib/podman:v1")
    digest = podman(
        "image", "inspect", "--format", "{{.Digest}}", "mirror-test.invalid/lib/podman:v1"
    )
    assert digest.strip() == small_image.digest


def test_ctr_pulls_through_a_hosts_dir_mirror(
    regd: RegdServer, upstream: Upstream, skopeo: Skopeo, small_image: LayoutImage, tmp_path: Path
) -> None:
    seed(skopeo, small_image, upstream, "lib/ctr:v1")
    hosts = tmp_path / "hosts" / "mirror-test.invalid"
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        'server = "http://mirror-test.invalid"\n'
        f'[host."http://{regd.host}/v2/up"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n"
    )
    root = Path(tempfile.mkdtemp(prefix="regd-ctrd-"))
    try:
        try:
            daemon = Containerd(root)
        except (RuntimeError, OSError) as exc:
            pytest.skip(f"containerd cannot run here: {exc}")
        try:
            daemon(
                "images",
                "pull",
                "--hosts-dir",
                str(tmp_path / "hosts"),
                "--snapshotter",
                "native",
                "mirror-test.invalid/lib/ctr:v1",
            )
            assert small_image.digest in daemon("images", "ls")
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
