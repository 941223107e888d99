"""/metrics of real regd processes, read with prometheus_client's own parser and checked
against the requests each test made; with two workers, every scrape tells the same totals."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.helpers.http_api import ApiClient
from tests.helpers.oci import sha256
from tests.helpers.servers import RegdFactory, RegdServer, free_port
from tests.observability.support import json_lines, scrape, total, value, wait_for

pytestmark = pytest.mark.e2e

REQUESTS = "regd_http_requests_total"
LATENCY = "regd_http_request_duration_seconds_count"
SENT = "regd_http_sent_bytes_total"
RECEIVED = "regd_http_received_bytes_total"


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegdServer]:
    """Two workers on SQLite, logging every request as JSON (the logs tell which worker
    answered)."""
    scratch = tmp_path_factory.mktemp("metrics")
    server = RegdServer(
        data_dir=scratch / "data",
        database_url=None,
        scratch=scratch,
        workers=2,
        log_level="info",
        extra_args=["--log-format", "json"],
        env={"REGD_ACCESS_LOG": "1", "REGD_UPLOAD_PURGE_INTERVAL": "0"},
    )
    server.start()
    yield server
    server.stop()


def _access(server: RegdServer) -> dict[str, dict[str, object]]:
    """Access lines by request id."""
    return {str(line["id"]): line for line in json_lines(server) if line["logger"] == "regd.access"}


def test_workers_report_one_view_of_every_request(two_workers: RegdServer) -> None:
    url = two_workers.url
    before = scrape(url)
    made: list[str] = []
    body_bytes = 0

    def spread() -> bool:
        # A connection per request, so the kernel hands them to either worker.
        for _ in range(10):
            rid = f"spread-{len(made)}"
            answer = httpx.get(
                f"{url}/v2/metrics/test/manifests/missing",
                headers={"connection": "close", "x-request-id": rid},
            )
            assert answer.status_code == 404
            assert answer.headers["x-request-id"] == rid
            made.append(rid)
            nonlocal body_bytes
            body_bytes += len(answer.content)
        logged = _access(two_workers)
        return len({logged[rid]["pid"] for rid in made if rid in logged}) == 2

    wait_for(spread, "both workers answering some of the requests", timeout=60)
    wait_for(
        lambda: all(rid in _access(two_workers) for rid in made), "every access line", timeout=30
    )
    n = len(made)
    labels = {"route": "manifest", "method": "GET", "status": "404"}
    for _ in range(6):  # whichever worker answers the scrape
        after = scrape(url)
        assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == n
        latency = {"route": "manifest", "method": "GET"}
        assert value(after, LATENCY, **latency) - value(before, LATENCY, **latency) == n
        sent = value(after, SENT, route="manifest") - value(before, SENT, route="manifest")
        assert sent == body_bytes
        # The lookups behind those answers, in the store's own words.
        assert total(after, "regd_database_operation_duration_seconds_count") > total(
            before, "regd_database_operation_duration_seconds_count"
        )


def test_a_push_and_a_pull_count_their_bytes(two_workers: RegdServer) -> None:
    url = two_workers.url
    data = b"seven bytes, many times over " * 300
    before = scrape(url)
    with ApiClient(url) as api:
        digest = api.push_blob("metrics/bytes", data)
        assert api.get_blob("metrics/bytes", digest) == data
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(RECEIVED, route="blob_upload") == len(data)
    assert delta(SENT, route="blob") == len(data)
    assert delta(REQUESTS, route="blob_upload", method="POST", status="202") == 1
    assert delta(REQUESTS, route="blob_upload", method="PUT", status="201") == 1
    assert delta(REQUESTS, route="blob", method="GET", status="200") == 1
    assert value(after, "regd_uploads_in_flight") == 0
    # The blob went through the storage driver: written (whole when small, else through a
    # writer that commits) and read back.
    storage = "regd_storage_operation_duration_seconds_count"
    assert delta(storage, operation="put_content") + delta(storage, operation="commit") >= 1
    assert delta(storage, operation="reader") >= 1
    assert sha256(data) == digest


def test_a_collection_is_counted(two_workers: RegdServer) -> None:
    url = two_workers.url
    answer = httpx.post(f"{url}/admin/v1/gc", json={"dry_run": True}, timeout=60)
    assert answer.status_code == 200
    dry = scrape(url)
    # A dry run changes nothing and is not a collection.
    assert value(dry, "regd_gc_runs_total", trigger="admin") == 0
    answer = httpx.post(f"{url}/admin/v1/gc", json={}, timeout=60)
    assert answer.status_code == 200, answer.text
    freed = answer.json()["totals"]["bytes_freed"]
    after = scrape(url)
    assert value(after, "regd_gc_runs_total", trigger="admin") == 1
    assert value(after, "regd_gc_freed_bytes_total") == freed
    assert value(after, "regd_gc_duration_seconds_count") == 1


def test_json_logs_and_request_ids(two_workers: RegdServer) -> None:
    url = two_workers.url
    kept = httpx.get(f"{url}/v2/", headers={"x-request-id": "lb-7f3a:edge/1"})
    assert kept.headers["x-request-id"] == "lb-7f3a:edge/1"
    made = httpx.get(f"{url}/v2/")
    generated = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # Too long, or not plain visible ASCII: replaced, never echoed.
    for bad in ("x" * 129, "has space"):
        answer = httpx.get(f"{url}/v2/", headers={"x-request-id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    # Early answers made before any handler carry it too.
    both = httpx.get(f"{url}/healthz", headers={"x-request-id": "health-1"})
    assert both.headers["x-request-id"] == "health-1"

    def logged() -> bool:
        lines = _access(two_workers)
        return all(rid in lines for rid in ("lb-7f3a:edge/1", generated, "health-1"))

    wait_for(logged, "the access lines of those requests", timeout=30)
    line = _access(two_workers)["lb-7f3a:edge/1"]
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v2/", 200)
    assert (line["level"], type(line["ms"])) == ("INFO", float)
    # Every line regd wrote is one JSON object, start-up lines included.
    assert any(entry["logger"] == "regd.server" for entry in json_lines(two_workers))


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


ADMIN_TOKEN = "metrics-admin-token-0123456789"


def test_with_auth_metrics_need_the_admin_right_and_count_refusals(
    regd_factory: RegdFactory, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"right-password", bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"carol:{hashed}\n")
    server = regd_factory(
        env={"REGD_AUTH_HTPASSWD": str(htpasswd), "REGD_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    url = server.url
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/metrics", headers=_basic("carol", "right-password")).status_code == 403
    # Probes need nothing.
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    before = scrape(url, admin)
    for _ in range(2):
        answer = httpx.get(f"{url}/v2/", headers=_basic("carol", "wrong"))
        assert answer.status_code == 401
    # Without credentials a 401 is how a client learns to log in: not a failure.
    assert httpx.get(f"{url}/v2/").status_code == 401
    after = scrape(url, admin)
    failures = "regd_auth_failures_total"
    assert (
        value(after, failures, reason="unauthenticated")
        - value(before, failures, reason="unauthenticated")
        == 2
    )
    # The 403 above: credentials good, right missing.
    assert value(after, failures, reason="denied") == 1
    # Failed logins from one address are throttled after ten.
    throttled = 0
    for _ in range(12):
        answer = httpx.get(f"{url}/v2/", headers=_basic("mallory", "guess"))
        throttled += answer.status_code == 429
    assert throttled >= 1
    last = scrape(url, admin)
    assert value(last, "regd_auth_throttled_total") == throttled


def test_a_metrics_listener_of_its_own(regd_factory: RegdFactory) -> None:
    port = free_port()
    server = regd_factory(env={"REGD_METRICS_ADDR": f"127.0.0.1:{port}"})
    metrics_url = f"http://127.0.0.1:{port}"
    before = scrape(metrics_url)
    assert httpx.get(f"{server.url}/v2/").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    assert httpx.get(f"{metrics_url}/v2/").status_code == 404
    assert httpx.get(f"{metrics_url}/readyz").status_code == 200
    after = scrape(metrics_url)
    for labels, count in (
        ({"route": "base", "method": "GET", "status": "200"}, 1),
        ({"route": "metrics", "method": "GET", "status": "404"}, 1),
        ({"route": "base", "method": "GET", "status": "404"}, 1),
        ({"route": "health", "method": "GET", "status": "200"}, 1),
    ):
        assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == count


def test_metrics_off(regd_factory: RegdFactory) -> None:
    server = regd_factory(env={"REGD_METRICS": "false"})
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    assert httpx.get(f"{server.url}/v2/").status_code == 200


def test_a_killed_runs_metric_directory_goes_at_the_next_start(
    regd_factory: RegdFactory, tmp_path: Path
) -> None:
    # SIGKILL runs no clean-up: the next start removes what the dead run left, and
    # leaves a running process's directory alone.
    temp = tmp_path / "tmp"
    temp.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    killed = temp / f"regd-metrics-{ended.pid}-abc123"
    killed.mkdir()
    (killed / "counter_1.db").write_bytes(b"x" * 4096)
    running = temp / f"regd-metrics-{os.getpid()}-def456"
    running.mkdir()
    unrelated = temp / "regd-metrics-notapid"
    unrelated.mkdir()

    first = regd_factory(workers=2, env={"TMPDIR": str(temp)})
    assert httpx.get(f"{first.url}/v2/").status_code == 200
    assert not killed.exists()
    assert running.is_dir()
    assert unrelated.is_dir()
    assert first.process is not None
    ours = [p for p in temp.iterdir() if p.name.startswith(f"regd-metrics-{first.process.pid}-")]
    assert len(ours) == 1

    first.kill9()
    assert ours[0].is_dir()  # nothing ran to remove it
    second = regd_factory(workers=2, env={"TMPDIR": str(temp)})
    assert httpx.get(f"{second.url}/v2/").status_code == 200
    assert not ours[0].exists()
    assert running.is_dir()
