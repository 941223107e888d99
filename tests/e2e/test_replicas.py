"""Three regd replicas on one PostgreSQL database and one storage, driven through clients
that send every request to the next replica (no sticky sessions), as a load balancer would.

One trio serves the whole module (starting three processes costs seconds); each test works
in repositories of its own. The test that kills a replica starts it again before it ends.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers.http_api import MANIFEST_ACCEPT, ApiClient, expect, location, with_digest
from tests.helpers.oci import Layout, LayoutImage, sha256
from tests.helpers.pg import Databases
from tests.helpers.replicas import (
    Balancer,
    EnvStorage,
    FilesystemStorage,
    Replicas,
    RoundRobinApi,
    SharedStorage,
    TcpRelay,
)
from tests.helpers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 - the fixture
from tests.helpers.servers import RegdFactory, RegdServer
from tests.helpers.store import check_blob_store, metadata_store

pytestmark = pytest.mark.e2e

STORAGES = ["filesystem", "s3"]
# Generous: the machine running the suite may be busy, and a test must not fail on that.
LOAD_DEADLINE = 120.0
SBOM = "application/vnd.example.sbom.v1+json"


@pytest.fixture(scope="module", params=STORAGES)
def storage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedStorage]:
    """One storage for the trio: a directory, or a bucket behind a relay the outage test
    can cut."""
    if request.param == "filesystem":
        yield FilesystemStorage(tmp_path_factory.mktemp("shared") / "storage")
        return
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    where = urlsplit(endpoint.url)
    with TcpRelay((where.hostname or "127.0.0.1", where.port or 80)) as relay:
        settings = {
            **endpoint.regd_env(endpoint.create_bucket()),
            "REGD_S3_ENDPOINT_URL": relay.url,
        }
        yield EnvStorage("s3", settings, relay)


@pytest.fixture(scope="module")
def database(pg_databases: Databases) -> Iterator[str]:
    url = pg_databases.create()
    yield url
    pg_databases.drop(url)


@pytest.fixture(scope="module")
def replicas(
    storage: SharedStorage, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    with Replicas(
        tmp_path_factory.mktemp("replicas"), database_url=database, storage=storage
    ) as trio:
        yield trio


@pytest.fixture
def api(replicas: Replicas) -> Iterator[RoundRobinApi]:
    client = RoundRobinApi(replicas)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def balancer(replicas: Replicas) -> Iterator[Balancer]:
    with Balancer(replicas) as proxy:
        yield proxy


def unique(prefix: str) -> str:
    return f"e2e/{prefix}-{uuid.uuid4().hex[:8]}"


def pull_image(client: ApiClient, name: str, reference: str) -> str:
    """Fetch a manifest and every blob it names, checking each digest; returns the
    manifest's digest. Indexes are followed into their manifests."""
    answer = client.get_manifest(name, reference)
    digest = sha256(answer.content)
    assert answer.headers.get("docker-content-digest") == digest
    doc = answer.json()
    for child in doc.get("manifests") or []:
        pull_image(client, name, child["digest"])
    for blob in [doc.get("config"), *(doc.get("layers") or [])]:
        if blob is None:
            continue
        data = client.get_blob(name, blob["digest"])
        assert sha256(data) == blob["digest"], f"{name}: blob {blob['digest']} is damaged"
        assert len(data) == blob["size"]
    return digest


def on_each(replicas: Replicas) -> Iterator[ApiClient]:
    for server in replicas.live():
        with ApiClient(server.url) as client:
            yield client


def path_of(url: str) -> str:
    """The path and query of an upload URL, to send it to any replica."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


REGCTL = str(Path(sys.executable).with_name("regctl"))


def regctl_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("REGCTL_")}


def regctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REGCTL, *args],
        env=regctl_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def push_in_chunks(client: ApiClient, name: str, data: bytes, bounds: list[int]) -> None:
    """One session, a PATCH per span between consecutive `bounds`, then the PUT."""
    url = client.start_upload(name)
    for start, end in itertools.pairwise(bounds):
        answer = client.http.patch(
            url,
            content=data[start:end],
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{end - 1}",
            },
        )
        expect(answer, f"chunk {start}-{end - 1}", 202)
        assert answer.headers.get("range") == f"0-{end - 1}"
        url = location(answer)
    done = client.http.put(with_digest(url, sha256(data)))
    expect(done, "complete the upload", 201)
    assert done.headers.get("docker-content-digest") == sha256(data)


def spread(hosts: list[str], replicas: Replicas) -> None:
    """Consecutive requests went to different replicas, and every replica had some."""
    assert all(a != b for a, b in itertools.pairwise(hosts)), hosts
    assert set(hosts) == {s.host for s in replicas.live()}, hosts


# -- pushing and pulling -----------------------------------------------------------------


def test_monolithic_push_and_pull_on_every_replica(api: RoundRobinApi, replicas: Replicas) -> None:
    name = unique("mono")
    digest, _ = api.push_tiny_image(name, "v1", payload=os.urandom(200_000))
    spread(api.transport.history, replicas)
    # A streamed monolithic POST, larger than what regd takes in memory.
    big = os.urandom(3 * 1024 * 1024 + 17)
    answer = api.http.post(
        f"/v2/{name}/blobs/uploads/", params={"digest": sha256(big)}, content=big
    )
    expect(answer, "monolithic POST", 201)
    for client in on_each(replicas):
        assert pull_image(client, name, "v1") == digest
        assert client.get_blob(name, sha256(big)) == big


def test_chunked_push_with_every_chunk_on_another_replica(
    api: RoundRobinApi, replicas: Replicas
) -> None:
    name = unique("chunked")
    data = os.urandom(4 * 1024 * 1024 + 123)
    bounds = [0, 1_000_000, 1_000_001, 2_500_000, len(data) - 10, len(data)]
    first = len(api.transport.history)
    push_in_chunks(api, name, data, bounds)
    spread(api.transport.history[first:], replicas)
    for client in on_each(replicas):
        assert client.get_blob(name, sha256(data)) == data


def test_mount_from_another_repository(api: RoundRobinApi, replicas: Replicas) -> None:
    source, target = unique("mount-from"), unique("mount-to")
    blob = os.urandom(300_000)
    digest = api.push_blob(source, blob)
    answer = api.http.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    expect(answer, "mount", 201)
    assert answer.headers.get("docker-content-digest") == digest
    for client in on_each(replicas):
        head = client.http.head(f"/v2/{target}/blobs/{digest}")
        expect(head, f"HEAD mounted blob on {client.base_url}", 200)


# -- tags, manifests, referrers, listings --------------------------------------------------


def test_tags_manifests_referrers_and_listings(api: RoundRobinApi, replicas: Replicas) -> None:
    name = unique("meta")
    digest, body = api.push_tiny_image(name, "v1", payload=b"layer one")
    api.push_manifest(name, "v2", body)
    api.push_manifest(name, "v3", body)
    subject = {"mediaType": json.loads(body)["mediaType"], "digest": digest, "size": len(body)}
    sbom, _, _ = api.push_artifact(name, subject, artifact_type=SBOM, payload=b'{"p": []}')

    for client in on_each(replicas):
        assert sorted(client.tags(name)) == ["v1", "v2", "v3"]
        catalog = expect(client.http.get("/v2/_catalog?n=1000"), "catalog", 200).json()
        assert name in catalog["repositories"]
        referrers = client.referrers(name, digest).json()["manifests"]
        assert [(r["digest"], r["artifactType"]) for r in referrers] == [(sbom, SBOM)]

    expect(api.http.delete(f"/v2/{name}/manifests/v2"), "delete tag v2", 202)
    for client in on_each(replicas):
        assert sorted(client.tags(name)) == ["v1", "v3"]
        missing = client.http.get(f"/v2/{name}/manifests/v2", headers={"Accept": MANIFEST_ACCEPT})
        assert missing.status_code == 404, missing.text
        assert pull_image(client, name, "v1") == digest

    expect(api.http.delete(f"/v2/{name}/manifests/{digest}"), "delete the manifest", 202)
    for client in on_each(replicas):
        for reference in ("v1", "v3", digest):
            gone = client.http.get(
                f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert gone.status_code == 404, gone.text
            assert gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert client.tags(name) == []


def test_regctl_copy_into_and_out_of_the_replicas(
    balancer: Balancer, replicas: Replicas, oci_image: LayoutImage, tmp_path: Path
) -> None:
    name = unique("copied")
    first = len(balancer.transport.history)
    copied_in = regctl("copy", "-q", oci_image.ref, f"{balancer.host}/{name}:v1")
    assert copied_in.returncode == 0, copied_in.stderr
    out = tmp_path / "out"
    copied_out = regctl("copy", "-q", f"{balancer.host}/{name}:v1", f"oci:{out}:v1")
    assert copied_out.returncode == 0, copied_out.stderr
    assert set(balancer.transport.history[first:]) == {s.host for s in replicas.live()}
    assert Layout(out).resolve("v1")["digest"] == oci_image.digest
    for client in on_each(replicas):
        assert pull_image(client, name, "v1") == oci_image.digest


# -- garbage collection while serving ------------------------------------------------------


async def test_one_sweep_at_a_time_across_replicas(
    replicas: Replicas, database: str, tmp_path: Path
) -> None:
    # A sweep in progress anywhere is the `gc` lease in the shared database.
    async with metadata_store(database, tmp_path) as store:
        assert await store.acquire_lock("gc", "a sweep elsewhere", 60)
        try:
            # All three at once: each must find the sweep running, wherever it is.
            asked = [
                subprocess.Popen(
                    [REGCTL, "gc", "-q", "--grace", "0s", server.host],
                    env=regctl_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for server in replicas.live()
            ]
            for process in asked:
                out, err = process.communicate(timeout=LOAD_DEADLINE)
                assert process.returncode != 0, out
                lines = err.strip().splitlines()
                assert len(lines) == 1, err
                assert "another garbage collection is running" in lines[0]
        finally:
            await store.release_lock("gc", "a sweep elsewhere")
    # Released, the lease lets the next sweep run (asked of the admin API directly: the
    # command line was shown above).
    with ApiClient(replicas[1].url) as client:
        expect(client.http.post("/admin/v1/gc", json={"grace_seconds": 3600}), "gc", 200)


class _Load(threading.Thread):
    """Pushes and pulls on one replica in a loop until told to stop; records what it
    tagged and any failure."""

    def __init__(self, server: RegdServer, keep: tuple[str, str, str]) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.keep = keep
        self.stop = threading.Event()
        self.rounds = 0
        self.tagged: list[tuple[str, str, str]] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        name, tag, digest = self.keep
        try:
            with ApiClient(self.server.url) as client:
                while not self.stop.is_set():
                    assert pull_image(client, name, tag) == digest
                    self._push(client, f"{name}-busy-{self.server.port}")
                    self.rounds += 1
        except BaseException as exc:
            self.failure = exc

    def _push(self, client: ApiClient, name: str) -> None:
        tag = f"t{self.rounds}"
        for _ in range(5):
            try:
                digest, _ = client.push_tiny_image(
                    name, tag, payload=os.urandom(5000), label=uuid.uuid4().hex
                )
            except AssertionError as exc:
                # With no grace period a sweep may take blobs just uploaded for a manifest
                # not yet pushed; the manifest is then refused, never accepted broken.
                if "MANIFEST_BLOB_UNKNOWN" not in str(exc):
                    raise
                continue
            self.tagged.append((name, tag, digest))
            return
        raise AssertionError(f"{name}:{tag} was refused five times in a row")

    def wait_rounds(self, count: int) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE
        target = self.rounds + count
        while self.rounds < target and self.failure is None and self.is_alive():
            assert time.monotonic() < deadline, f"load on {self.server.host} stalled"
            time.sleep(0.02)


def test_gc_on_one_replica_while_the_others_serve(api: RoundRobinApi, replicas: Replicas) -> None:
    name = unique("gc")
    kept_digest, _ = api.push_tiny_image(name, "keep", payload=b"kept layer")
    # Garbage for the sweep: images whose tags are gone, and blobs no manifest names.
    garbage = []
    for i in range(3):
        digest, _ = api.push_tiny_image(name, f"old{i}", payload=os.urandom(20_000))
        expect(api.http.delete(f"/v2/{name}/manifests/old{i}"), "untag", 202)
        garbage.append(digest)
        api.push_blob(name, os.urandom(10_000))

    loads = [_Load(server, (name, "keep", kept_digest)) for server in replicas.servers[1:]]
    for load in loads:
        load.start()
    try:
        for load in loads:
            load.wait_rounds(1)
        swept = regctl("gc", "--json", "--grace", "0s", "--delete-untagged", replicas[0].host)
        for load in loads:
            load.wait_rounds(1)
    finally:
        for load in loads:
            load.stop.set()
        for load in loads:
            load.join(LOAD_DEADLINE)
    for load in loads:
        if load.failure is not None:
            raise load.failure
    assert swept.returncode == 0, swept.stderr
    report = json.loads(swept.stdout)
    deleted = {m["digest"] for m in report["manifests"]}
    assert set(garbage) <= deleted, report
    assert kept_digest not in deleted

    tagged = [(name, "keep", kept_digest)] + [t for load in loads for t in load.tagged]
    for client in on_each(replicas):
        for repository, tag, digest in tagged:
            assert pull_image(client, repository, tag) == digest
    if isinstance(replicas.storage, FilesystemStorage):
        check_blob_store(replicas.storage.root)


# -- a replica dies mid-upload -------------------------------------------------------------


def test_upload_continues_on_another_replica_after_a_sigkill(replicas: Replicas) -> None:
    first, victim, third = replicas.servers
    name = unique("killed")
    piece = 1024 * 1024
    # More than loopback sockets buffer: once the client has handed this much over, the
    # victim is surely reading the chunk (and holds the session's write lease).
    in_flight = 16 * piece
    data = os.urandom(piece + in_flight + piece + 99)
    started = threading.Event()
    hold = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield data[piece : piece + in_flight]
        started.set()
        # The replica dies while the rest of this chunk is on its way.
        hold.wait(LOAD_DEADLINE)
        yield data[piece + in_flight :]

    with httpx.Client(timeout=60) as client:
        answer = client.post(f"{first.url}/v2/{name}/blobs/uploads/")
        path = path_of(location(expect(answer, "start upload", 202)))
        answer = client.patch(
            f"{first.url}{path}",
            content=data[:piece],
            headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{piece - 1}"},
        )
        path = path_of(location(expect(answer, "first chunk", 202)))

        outcome: list[BaseException | httpx.Response] = []

        def send_doomed_chunk() -> None:
            try:
                outcome.append(
                    client.patch(
                        f"{victim.url}{path}",
                        content=slow_body(),
                        headers={"Content-Type": "application/octet-stream"},
                    )
                )
            except BaseException as exc:
                outcome.append(exc)

        sender = threading.Thread(target=send_doomed_chunk, daemon=True)
        sender.start()
        assert started.wait(LOAD_DEADLINE), "the chunk never started"
        try:
            victim.kill9()
        finally:
            hold.set()
        sender.join(LOAD_DEADLINE)
        assert len(outcome) == 1, "the doomed chunk never ended"
        assert isinstance(outcome[0], httpx.TransportError), outcome

        # The client asks another replica where the session stands and goes on from there.
        status = client.get(f"{third.url}{path}")
        expect(status, "status after the crash", 204)
        accepted = int(status.headers["range"].split("-")[1]) + 1
        assert accepted == piece
        answer = client.patch(
            f"{third.url}{path}",
            content=data[accepted:],
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{accepted}-{len(data) - 1}",
            },
        )
        path = path_of(location(expect(answer, "the rest after the crash", 202)))
        done = client.put(with_digest(f"{first.url}{path}", sha256(data)))
        expect(done, "complete the upload", 201)
        assert done.headers.get("docker-content-digest") == sha256(data)

    victim.start()
    for api in on_each(replicas):
        assert api.get_blob(name, sha256(data)) == data


# -- the storage unreachable for a while ------------------------------------------------


def test_storage_unreachable_for_a_while(api: RoundRobinApi, replicas: Replicas) -> None:
    relay = getattr(replicas.storage, "relay", None)
    if relay is None:
        pytest.skip(
            f"{replicas.storage.name} storage cannot be made unreachable from here; "
            "this case runs on S3, behind a relay it cuts"
        )
    name = unique("outage")
    digest, body = api.push_tiny_image(name, "v1", payload=os.urandom(100_000))
    layer = json.loads(body)["layers"][0]["digest"]
    refused = os.urandom(300_000)
    chunk = os.urandom(200_000)
    session = api.start_upload(name)

    relay.cut()
    try:
        answers = {
            "monolithic push": api.http.post(
                f"/v2/{name}/blobs/uploads/", params={"digest": sha256(refused)}, content=refused
            ),
            "chunk": api.http.patch(
                session,
                content=chunk,
                headers={"Content-Type": "application/octet-stream", "Content-Range": "0-199999"},
            ),
            "blob read": api.http.get(f"/v2/{name}/blobs/{layer}"),
        }
        for what, answer in answers.items():
            assert answer.status_code == 503, f"{what}: {answer.status_code} {answer.text}"
            assert int(answer.headers["retry-after"]) > 0, what
            assert answer.json()["errors"][0]["code"] == "TOOMANYREQUESTS", what
        # Nothing refused was taken in: no blob, no bytes in the session, and no manifest
        # may name the blob.
        assert api.http.head(f"/v2/{name}/blobs/{sha256(refused)}").status_code == 404
        doc = json.loads(body)
        doc["layers"][0] = {**doc["layers"][0], "digest": sha256(refused), "size": len(refused)}
        orphan = api.http.put(
            f"/v2/{name}/manifests/v2",
            content=json.dumps(doc).encode(),
            headers={"Content-Type": doc["mediaType"]},
        )
        assert orphan.status_code == 400, orphan.text
        assert orphan.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
        status = expect(api.http.get(session), "session status in the outage", 204)
        # An empty session reports "0-0", as registries do.
        assert status.headers.get("range") == "0-0", status.headers
        # Metadata reads need no storage.
        for method in ("HEAD", "GET"):
            expect(
                api.http.request(
                    method, f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}
                ),
                f"manifest {method} in the outage",
                200,
            )
        assert api.tags(name) == ["v1"]
    finally:
        relay.restore()

    # Service resumes by itself: no replica is restarted or told anything.
    deadline = time.monotonic() + LOAD_DEADLINE
    while api.http.get(f"/v2/{name}/blobs/{layer}").status_code != 200:
        assert time.monotonic() < deadline, "blob reads did not resume after the outage"
        time.sleep(0.1)
    answer = api.http.patch(
        session,
        content=chunk,
        headers={"Content-Type": "application/octet-stream", "Content-Range": "0-199999"},
    )
    session = location(expect(answer, "the chunk again", 202))
    expect(api.http.put(with_digest(session, sha256(chunk))), "complete after the outage", 201)
    assert api.push_blob(name, refused) == sha256(refused)
    for client in on_each(replicas):
        assert pull_image(client, name, "v1") == digest
        assert client.get_blob(name, sha256(chunk)) == chunk
        assert client.get_blob(name, sha256(refused)) == refused


# -- one replica on SQLite -----------------------------------------------------------------


def test_one_replica_on_sqlite(
    storage: SharedStorage, regd_factory: RegdFactory, tmp_path: Path
) -> None:
    """The smallest deployment on the same storage kind: one process, its own SQLite."""
    if isinstance(storage, FilesystemStorage):
        pytest.skip("one process on SQLite and a filesystem is what the rest of the suite runs")
    server = regd_factory(database_url=None, env=dict(storage.env()))
    with ApiClient(server.url) as client:
        name = unique("single")
        digest, _ = client.push_tiny_image(name, "v1", payload=os.urandom(150_000))
        data = os.urandom(2 * 1024 * 1024 + 1)
        push_in_chunks(client, name, data, [*range(0, len(data), 700_000), len(data)])
        assert pull_image(client, name, "v1") == digest
        assert client.get_blob(name, sha256(data)) == data
