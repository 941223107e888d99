"""A mirror's size limit: the least recently pulled image goes at the next collection,
pushed images stay; `regctl cache` and `regctl du` show what the cache holds."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from regctl.main import main
from tests.helpers.http_api import MANIFEST_ACCEPT, ApiClient
from tests.mirror.conftest import mirror_table, start_regd, start_upstream

LAYER = 60_000


def _pull(base: str, name: str) -> list[str]:
    """Pull an image's manifest and blobs (checking each is served); its blob digests."""
    with httpx.Client(base_url=base, timeout=60) as http:
        manifest = http.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        assert manifest.status_code == 200, manifest.text
        doc = manifest.json()
        digests = [doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])]
        for digest in digests:
            assert http.get(f"/v2/{name}/blobs/{digest}").status_code == 200
    return digests


def _regctl(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_least_recently_pulled_goes_and_pushed_content_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = start_upstream(tmp_path / "upstream")
    try:
        with ApiClient(upstream.url) as up:
            up.push_tiny_image("lib/old", "v1", payload=b"o" * LAYER, label="old")
            up.push_tiny_image("lib/new", "v1", payload=b"n" * LAYER, label="new")
        # Room for one image, not two.
        regd = start_regd(tmp_path / "regd", mirror_table("up", upstream.url, max_size=100_000))
        try:
            old = _pull(regd.url, "up/lib/old")
            new = _pull(regd.url, "up/lib/new")
            with ApiClient(regd.url) as api:
                api.push_tiny_image("local/app", "v1", payload=b"p" * LAYER, label="pushed")
            host = regd.host
            before = json.loads(_regctl(capsys, "cache", "ls", "-r", host, "--json"))
            assert before["mirrors"][0]["bytes"] > 100_000
            usage = json.loads(_regctl(capsys, "du", host, "--json"))
            assert usage["cached_bytes"] >= 2 * LAYER
            assert usage["pushed_bytes"] >= LAYER

            gc = httpx.post(f"{regd.url}/admin/v1/gc", json={"grace_seconds": 0}, timeout=60)
            assert gc.status_code == 200, gc.text
            freed = {b["digest"] for b in gc.json()["blobs"]}
            assert set(old) <= freed
            assert not freed & set(new)

            after = json.loads(_regctl(capsys, "cache", "ls", "-r", host, "--json"))
            held = {(e["repository"], e["digest"]) for e in after["entries"]}
            assert {r for r, _ in held} == {"up/lib/new"}
            assert after["mirrors"][0]["bytes"] <= 100_000

            _pull(regd.url, "local/app")
            assert [upstream.blob_gets(d) for d in new] == [1, 1]
            _pull(regd.url, "up/lib/old")
            assert [upstream.blob_gets(d) for d in old] == [2, 2]

            out = _regctl(capsys, "cache", "rm", "-r", host, "--repository", "up/lib/old")
            assert "evicted 3 entries" in out
        finally:
            regd.stop()
    finally:
        upstream.stop()
