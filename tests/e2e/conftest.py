"""End-to-end fixtures: real clients, real images, and registries to point them at.

`registry` runs a test against regd (on SQLite and on PostgreSQL) and against the reference
registry, for behaviour that any registry must show; tests of regd-only features (referrers,
crash recovery, several processes) use `regd_server` or `regd_factory` directly.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.clients import Podman, Skopeo
from tests.helpers.http_api import ApiClient
from tests.helpers.oci import LayoutImage, build_image, build_multiplatform, machine_files
from tests.helpers.servers import RegdFactory, ServerProcess

REGISTRY_KINDS = ["regd-sqlite", "regd-postgresql", "distribution"]


@pytest.fixture(params=REGISTRY_KINDS)
def registry_server(request: pytest.FixtureRequest, regd_factory: RegdFactory) -> ServerProcess:
    """Any registry: regd on each database, or Distribution."""
    if request.param == "distribution":
        server: ServerProcess = request.getfixturevalue("distribution")
        return server
    url = request.getfixturevalue("fresh_pg_url") if request.param == "regd-postgresql" else None
    return regd_factory(database_url=url)


@pytest.fixture
def http(registry_server: ServerProcess) -> Iterator[ApiClient]:
    with ApiClient(registry_server.url) as client:
        yield client


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    return Skopeo(tmp_path / "skopeo")


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    runroot = Path(tempfile.mkdtemp(prefix="regd-podman-"))
    try:
        yield Podman(tmp_path / "podman", runroot)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


@pytest.fixture(scope="session")
def oci_image(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    """A small single-platform image in an OCI layout (read only: copy out, never into it)."""
    scratch = tmp_path_factory.mktemp("image")
    return build_image(
        scratch / "layout",
        "v1",
        files=machine_files(scratch / "files", unique=b"single"),
        labels={"org.opencontainers.image.title": "regd e2e"},
    )


@pytest.fixture(scope="session")
def oci_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[LayoutImage, list[LayoutImage]]:
    """A multi-platform index (linux/amd64 + linux/arm64) and its two images."""
    scratch = tmp_path_factory.mktemp("index")
    return build_multiplatform(scratch / "layout", "multi", scratch / "files")
