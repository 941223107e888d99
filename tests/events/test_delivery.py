"""Events reach a real webhook receiver: through an outage and a restart of regd, from two
replicas at once, signed, and in Distribution's envelope."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.events.receiver import Receiver
from tests.helpers.http_api import ApiClient, expect
from tests.helpers.servers import RegdFactory, RegdServer

SECRET = "a-shared-secret-of-some-length"
ENVELOPE = "application/vnd.docker.distribution.events.v1+json"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def config_file(tmp_path: Path, receiver: Receiver, **endpoint: str | float) -> Path:
    """A regd.toml with the receiver as endpoint `hook` (signed) and `other` (filtered)."""
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in endpoint.items())
    path = tmp_path / "regd.toml"
    path.write_text(
        f"""
[events]
poll_interval = 0.1

[[events.endpoint]]
name = "hook"
url = "{receiver.url}/hook"
secret = "{SECRET}"
headers = {{ Authorization = ["Bearer test"] }}
timeout = "500ms"
threshold = 2
backoff = 0.2
{extra}
[[notifications.endpoints]]
name = "other"
url = "{receiver.url}/other"
repositories = "ev/other.*"
ignore = {{ actions = ["delete"] }}
pulls = true
backoff = 0.2
"""
    )
    return path


def admin(server: RegdServer, path: str, **kwargs: Any) -> Any:
    method = "POST" if "json" in kwargs else "GET"
    answer = httpx.request(method, f"{server.url}/admin/v1{path}", timeout=10, **kwargs)
    return expect(answer, f"admin {path}", 200).json()


def queue(server: RegdServer, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = admin(server, "/events", params={"endpoint": name})["endpoints"]
    return found[0]


def regctl(server: RegdServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "regctl"), *args, "--registry", server.host],
        capture_output=True,
        text=True,
        timeout=60,
    )


def summary(event: dict[str, Any]) -> tuple[str, str, str | None, str | None]:
    target = event["target"]
    return event["action"], target["repository"], target.get("digest"), target.get("tag")


def test_nothing_is_lost_through_an_outage_and_a_restart(
    regd_factory: RegdFactory, database_url: str | None, receiver: Receiver, tmp_path: Path
) -> None:
    config = config_file(tmp_path, receiver)
    server = regd_factory(database_url=database_url, extra_args=["--config", str(config)])
    expected = []
    with ApiClient(server.url) as api:
        # The receiver is down: every change waits in the outbox.
        v1, _ = api.push_tiny_image("ev/app", "v1", payload=b"one")
        config_digest, layer1 = _blobs(api, "ev/app", v1)
        expected += [
            ("push", "ev/app", config_digest, None),
            ("push", "ev/app", layer1, None),
            ("push", "ev/app", v1, "v1"),
        ]
        mount = api.http.post(
            "/v2/ev/other/blobs/uploads/", params={"mount": layer1, "from": "ev/app"}
        )
        expect(mount, "mount", 201)
        expected.append(("mount", "ev/other", layer1, None))
        # Reported to the endpoint that asked for pulls, and to it only.
        assert api.get_blob("ev/other", layer1) == b"one"
        expect(api.http.delete("/v2/ev/app/manifests/v1"), "delete tag", 202)
        expected.append(("delete", "ev/app", None, "v1"))

    def attempts_failed() -> bool:
        state = queue(server, "hook")
        return bool(state["failures"] >= 2 and state["pending"] == len(expected))

    _poll(attempts_failed, "the deliveries to fail while the receiver is down")
    state = queue(server, "hook")
    assert receiver.url in state["last_error"]
    failed = regctl(server, "events", "--failed", "--json")
    assert failed.returncode == 0, failed.stderr
    assert [q["name"] for q in json.loads(failed.stdout)] == ["hook", "other"]

    server.restart()
    with ApiClient(server.url) as api:
        v2, _ = api.push_tiny_image("ev/app", "v2", payload=b"two")
        _, layer2 = _blobs(api, "ev/app", v2)
        expected += [
            ("push", "ev/app", config_digest, None),
            ("push", "ev/app", layer2, None),
            ("push", "ev/app", v2, "v2"),
        ]
        expect(api.http.delete(f"/v2/ev/app/manifests/{v2}"), "delete manifest", 202)
        expected.append(("delete", "ev/app", v2, None))
    answer = httpx.delete(f"{server.url}/admin/v1/repositories/ev/other", timeout=10)
    expect(answer, "delete repository", 200)
    expected.append(("delete", "ev/other", None, None))
    assert queue(server, "hook")["pending"] == len(expected)

    receiver.start()
    retried = regctl(server, "events", "retry")
    assert retried.returncode == 0, retried.stderr
    receiver.wait_for(len(expected), "/hook")
    receiver.wait_for(2, "/other")

    events = receiver.events("/hook")
    assert [summary(e) for e in events] == expected
    assert len({e["id"] for e in events}) == len(events)
    # The filtered endpoint hears of its repository only, and of no deletion.
    assert [summary(e) for e in receiver.events("/other")] == [
        expected[3],
        ("pull", "ev/other", layer1, None),
    ]
    for delivery in receiver.deliveries:
        assert delivery.headers["content-type"] == ENVELOPE
        if delivery.path == "/hook":
            assert delivery.signed_by(SECRET)
            assert delivery.headers["authorization"] == "Bearer test"
        else:
            assert "x-regd-signature" not in delivery.headers

    push = events[2]
    assert push["target"] == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": v1,
        "size": push["target"]["size"],
        "length": push["target"]["size"],
        "repository": "ev/app",
        "url": f"{server.url}/v2/ev/app/manifests/{v1}",
        "tag": "v1",
    }
    assert set(push["request"]) == {"id", "addr", "host", "method", "useragent"}
    assert push["request"]["method"] == "PUT"
    assert push["request"]["host"] == server.host
    assert push["request"]["useragent"].startswith("python-httpx/")
    assert set(push["source"]) == {"addr", "instanceID"}
    # Two processes made these events: the instance changed with the restart.
    assert events[0]["source"]["instanceID"] != events[-1]["source"]["instanceID"]

    def drained() -> bool:
        state = queue(server, "hook")
        return bool(state["pending"] == 0 and state["failures"] == 0)

    _poll(drained, "the queue to drain")
    assert queue(server, "hook")["delivered"] == len(expected)


def test_two_replicas_deliver_each_event_once(
    regd_factory: RegdFactory, fresh_pg_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    config = config_file(tmp_path, receiver)
    data = tmp_path / "shared"
    args = ["--config", str(config)]
    one = regd_factory(database_url=fresh_pg_url, data_dir=data, extra_args=args)
    two = regd_factory(database_url=fresh_pg_url, data_dir=data, extra_args=args)
    expected = []
    for i in range(12):
        server = (one, two)[i % 2]
        with ApiClient(server.url) as api:
            digest, _ = api.push_tiny_image("ev/app", f"t{i}", payload=b"layer %d" % i)
        expected.append(("push", "ev/app", digest, f"t{i}"))
        if i == 7:
            # Whichever held the lease, the other carries on.
            one.stop()
            one = two
    receiver.wait_for(3 * len(expected), "/hook")
    events = receiver.events("/hook")
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids) == 3 * len(expected)
    assert [summary(e) for e in events if e["target"].get("tag")] == expected
    assert len({e["source"]["instanceID"] for e in events}) == 2


def test_deliveries_share_one_connection(regd_factory: RegdFactory, tmp_path: Path) -> None:
    """A receiver that keeps connections alive gets every delivery on the first one: a
    connection per delivery would cost each a connect (and a TLS handshake)."""
    receiver = Receiver(keep_alive=True)
    receiver.start()
    try:
        server = regd_factory(extra_args=["--config", str(config_file(tmp_path, receiver))])
        with ApiClient(server.url) as api:
            for i in range(4):
                api.push_tiny_image("ev/app", f"t{i}", payload=b"layer %d" % i)
                # Each push in a delivery of its own (the poll interval is 0.1 s).
                receiver.wait_for(3 * (i + 1), "/hook")
        hook = [d for d in receiver.deliveries if d.path == "/hook"]
        assert len(hook) >= 4
        assert len({d.peer for d in hook}) == 1
    finally:
        receiver.stop()


def test_operators_can_drop_what_an_endpoint_will_never_take(
    regd_factory: RegdFactory, receiver: Receiver, tmp_path: Path
) -> None:
    config = config_file(tmp_path, receiver)
    server = regd_factory(extra_args=["--config", str(config)])
    with ApiClient(server.url) as api:
        for i in range(3):
            api.push_blob("ev/app", b"blob %d" % i)
    _poll(lambda: queue(server, "hook")["failures"] >= 1, "a failed delivery")
    first = queue(server, "hook")["oldest_seq"]
    dropped = regctl(server, "events", "drop", "--endpoint", "hook", "--through", str(first))
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped 1 event" in dropped.stdout
    assert queue(server, "hook")["pending"] == 2
    unknown = regctl(server, "events", "drop", "--endpoint", "nope")
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    receiver.start()
    expect(httpx.post(f"{server.url}/admin/v1/events/retry", json={}, timeout=10), "retry", 200)
    receiver.wait_for(2, "/hook")
    shown = regctl(server, "events")
    assert shown.returncode == 0, shown.stderr
    assert "hook" in shown.stdout


def _blobs(api: ApiClient, name: str, digest: str) -> tuple[str, str]:
    doc = json.loads(api.get_manifest(name, digest).content)
    return doc["config"]["digest"], doc["layers"][0]["digest"]


def _poll(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
