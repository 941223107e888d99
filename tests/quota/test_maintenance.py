"""Maintenance mode across two regd processes sharing one database (SQLite in one data dir,
and PostgreSQL): switched on through one, writes are refused by the other within its refresh
period the way Distribution's read-only mode refuses them, pulls and garbage collection go
on, `regctl status` shows it, and switched off writes are taken again."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers.http_api import ApiClient, with_digest
from tests.helpers.oci import sha256
from tests.helpers.servers import RegdFactory
from tests.quota.conftest import Cli, regd_env, stored_files

MESSAGE = "moving to new disks"
# Generous: the machine running the suite may be loaded; the switch itself takes 1 s here.
DEADLINE = 30.0


def eventually(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE:.0f} s")
        time.sleep(0.1)


def refused(answer: httpx.Response) -> None:
    """Distribution 2.8 in read-only mode answers 405 with `Allow: GET, HEAD`; regd adds the
    spec's error body with the operator's message."""
    assert answer.status_code == 405, f"{answer.request.method} {answer.request.url}: {answer.text}"
    assert answer.headers["allow"] == "GET, HEAD"
    error = answer.json()["errors"][0]
    assert error["code"] == "UNSUPPORTED"
    assert "maintenance mode" in error["message"]
    assert MESSAGE in error["message"]


def test_maintenance_mode_across_two_processes(
    regd_factory: RegdFactory,
    database_url: str | None,
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = tmp_path / "shared-data"
    env = regd_env(maintenance_refresh="1s")
    first = regd_factory(database_url=database_url, data_dir=data_dir, env=env)
    second = regd_factory(database_url=database_url, data_dir=data_dir, env=env)
    with ApiClient(first.url) as a, ApiClient(second.url) as b:
        digest, _ = b.push_tiny_image("app", "v1", payload=os.urandom(2048))
        garbage = b.push_blob("app", os.urandom(1000))
        session = b.start_upload("app")
        assert b.http.post("/v2/app/blobs/uploads/").status_code == 202

        switched = cli("maintenance", "on", "--message", MESSAGE, "-r", first.host)
        assert switched.code == 0, switched.err
        assert switched.out.startswith(f"maintenance mode on {first.host}: on since ")
        assert switched.out.rstrip().endswith(f": {MESSAGE}")
        # The process that made the switch refuses at once; the other within its refresh.
        refused(a.http.post("/v2/app/blobs/uploads/"))
        eventually(
            "a write refused by the second process",
            lambda: b.http.post("/v2/app/blobs/uploads/").status_code == 405,
        )

        before = stored_files(data_dir)
        layer = os.urandom(20_000)
        for answer in (
            b.http.post("/v2/app/blobs/uploads/"),
            b.http.post(f"/v2/app/blobs/uploads/?digest={sha256(layer)}", content=layer),
            b.http.patch(session, content=layer),
            b.http.put(with_digest(session, sha256(layer)), content=layer),
            b.http.delete(session),
            b.http.put(
                "/v2/app/manifests/v2",
                content=b.get_manifest("app", "v1").content,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            ),
            b.http.delete("/v2/app/manifests/v1"),
            b.http.delete(f"/v2/app/manifests/{digest}"),
            b.http.delete(f"/v2/app/blobs/{garbage}"),
        ):
            refused(answer)
        assert stored_files(data_dir) == before
        # Repository deletion through the admin API is a write too.
        refused(b.http.delete("/admin/v1/repositories/app"))

        # Pulls go on, on both.
        for api in (a, b):
            assert api.get_manifest("app", "v1").headers["docker-content-digest"] == digest
            assert api.tags("app") == ["v1"]
            assert api.http.get("/v2/_catalog").json()["repositories"] == ["app"]
        assert b.http.get(session).status_code == 204

        # Collection runs, and frees what no manifest holds.
        collected = cli("gc", second.host, "--grace", "0", "--json")
        assert collected.code == 0, collected.err
        assert garbage in [blob["digest"] for blob in collected.json()["blobs"]]
        assert b.http.head(f"/v2/app/blobs/{garbage}").status_code == 404

        monkeypatch.setenv("REGCTL_REGISTRY", second.host)
        status = cli("status", "--json")
        assert status.code == 0, status.err
        state = status.json()["maintenance"]
        assert state["enabled"] is True
        assert state["message"] == MESSAGE
        line = next(x for x in cli("status").out.splitlines() if x.startswith("maintenance:"))
        assert MESSAGE in line
        assert "writes refused" in line

        off = cli("maintenance", "off", "-r", second.host)
        assert off.code == 0, off.err
        assert off.out.strip() == f"maintenance mode on {second.host}: off"
        assert b.http.post("/v2/app/blobs/uploads/").status_code == 202
        eventually(
            "a write taken by the first process",
            lambda: a.http.post("/v2/app/blobs/uploads/").status_code == 202,
        )
        a.push_tiny_image("app", "v2", payload=layer)
        shown = cli("maintenance", "-r", first.host, "--json")
        assert shown.code == 0, shown.err
        assert shown.json()["enabled"] is False
        assert "writes refused" not in next(
            x for x in cli("status").out.splitlines() if x.startswith("maintenance:")
        )


def test_bad_switches_are_refused(regd_factory: RegdFactory, cli: Cli) -> None:
    server = regd_factory()
    with httpx.Client(base_url=server.url) as http:
        for body in ({}, {"enabled": "yes"}, {"enabled": True, "message": 5}, []):
            answer = http.put("/admin/v1/maintenance", json=body)
            assert answer.status_code == 400, answer.text
            assert answer.json()["errors"][0]["code"] == "UNSUPPORTED"
        assert http.get("/admin/v1/maintenance").json()["enabled"] is False
    misuse = cli("maintenance", "off", "--message", "why", "-r", server.host)
    assert misuse.code == 2
    assert "--message goes with `maintenance on`" in misuse.err
