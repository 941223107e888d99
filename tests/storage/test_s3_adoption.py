"""A bucket written by Distribution 2.8.2's s3 driver, adopted in place by regd."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers.http_api import ApiClient, expect
from tests.helpers.reference import require_distribution
from tests.helpers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 - the fixture
from tests.helpers.servers import RegdServer, ServerProcess, distribution_binary, free_port

pytestmark = pytest.mark.e2e

DISTRIBUTION_S3 = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    region: {region}
    bucket: {bucket}
    regionendpoint: {endpoint}
    accesskey: {access_key}
    secretkey: {secret_key}
    secure: false
    v4auth: true
    rootdirectory: /{prefix}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def test_regd_adopts_a_bucket_distribution_wrote(
    s3_endpoint: S3Endpoint,  # noqa: F811
    tmp_path: Path,
) -> None:
    require_distribution()
    binary = distribution_binary()
    assert binary is not None
    bucket = s3_endpoint.create_bucket()
    port = free_port()
    config = tmp_path / "distribution.yml"
    config.write_text(
        DISTRIBUTION_S3.format(
            region=s3_endpoint.region,
            bucket=bucket,
            endpoint=s3_endpoint.url,
            access_key=s3_endpoint.access_key,
            secret_key=s3_endpoint.secret_key,
            prefix="dist",
            port=port,
        )
    )
    env = {k: v for k, v in s3_endpoint.env().items() if not k.startswith("REGISTRY_")}
    distribution = ServerProcess(
        [binary, "serve", str(config)], port=port, log_dir=tmp_path / "dist-logs", env=env
    )
    distribution.start()
    try:
        with ApiClient(distribution.url) as api:
            one, manifest_one = api.push_tiny_image("team/app", "v1", payload=b"layer one")
            two, _ = api.push_tiny_image("team/app", "v2", payload=b"layer two" * 1000)
            other, _ = api.push_tiny_image("solo", "latest", payload=b"solo layer")
    finally:
        distribution.stop()
    keys = s3_endpoint.client().list_objects_v2(Bucket=bucket, Prefix="dist/docker/registry/v2/")
    assert keys.get("KeyCount", 0) > 0

    regd = RegdServer(
        data_dir=tmp_path / "regd-data",
        database_url=None,
        scratch=tmp_path / "regd",
        env=s3_endpoint.regd_env(bucket, prefix="dist"),
    )
    regd.start()
    try:
        with ApiClient(regd.url) as api:
            root = f"s3://{bucket}/dist"
            answer = api.http.post("/admin/v1/import-registry2", json={"root": root})
            report = expect(answer, "import", 200).json()
            assert report["repositories"] == ["solo", "team/app"]
            assert report["copied_bytes"] is False
            assert report["bytes_copied"] == 0
            assert report["skipped"] == []
            assert report["tags"] == 3

            assert sorted(api.tags("team/app")) == ["v1", "v2"]
            assert api.get_manifest("team/app", "v1").content == manifest_one
            assert api.get_manifest("team/app", "v2").headers["docker-content-digest"] == two
            assert api.get_manifest("solo", "latest").headers["docker-content-digest"] == other
            assert api.get_blob("team/app", _layer(manifest_one)) == b"layer one"

            elsewhere = api.http.post(
                "/admin/v1/import-registry2", json={"root": f"s3://{bucket}/other"}
            )
            assert elsewhere.status_code == 400, elsewhere.text
            assert one == api.get_manifest("team/app", "v1").headers["docker-content-digest"]
    finally:
        regd.stop()


def _layer(manifest: bytes) -> str:
    import json

    digest: str = json.loads(manifest)["layers"][0]["digest"]
    return digest


def test_import_of_a_bucket_needs_s3_storage(tmp_path: Path) -> None:
    regd = RegdServer(data_dir=tmp_path / "data", database_url=None, scratch=tmp_path)
    regd.start()
    try:
        answer = httpx.post(
            f"{regd.url}/admin/v1/import-registry2", json={"root": "s3://bucket/x"}, timeout=30
        )
        assert answer.status_code == 400, answer.text
        assert "only the bucket" in answer.text
    finally:
        regd.stop()
