"""Upstreams for the pull-through cache: Distribution 2.8 with its access log on (so a test
can count what the upstream served), regd processes configured with `[[mirror]]` tables,
and small images to pull."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import podman as podman
from tests.helpers.clients import Skopeo
from tests.helpers.oci import LayoutImage, build_image, build_multiplatform, machine_files
from tests.helpers.reference import require_distribution
from tests.helpers.servers import DistributionServer, RegdServer, ServerStartError
from tests.regctl.support import _AuthDistribution as AuthDistribution

# Whatever the machine's load, a poll for something regd must do gives up after this.
DEADLINE = 60.0


class Upstream(DistributionServer):
    """Distribution that logs every request it serves."""

    kind = "upstream"

    def __init__(self, *, root: Path, scratch: Path, extra_config: str = "") -> None:
        super().__init__(root=root, scratch=scratch, extra_config=extra_config)
        self.config.write_text(self.config.read_text().replace("disabled: true", "disabled: false"))

    def blob_gets(self, digest: str) -> int:
        """GETs of the blob the upstream answered (every start's log counts)."""
        pattern = re.compile(rf'"GET /v2/[^ ]+/blobs/{re.escape(digest)} HTTP')
        total = 0
        for log in self.log_dir.glob(f"{self.kind}-{self.port}-*.log"):
            total += len(pattern.findall(log.read_text(errors="replace")))
        return total


class AuthUpstream(Upstream, AuthDistribution):
    """An upstream with an `auth:` section: a 401 on /v2/ is its sign of life."""


def start_upstream(scratch: Path, extra_config: str = "") -> Upstream:
    require_distribution()
    kind = AuthUpstream if extra_config else Upstream
    server = kind(root=scratch / "root", scratch=scratch, extra_config=extra_config)
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


def mirror_table(prefix: str, upstream: str, **options: Any) -> str:
    lines = ["[[mirror]]", f'prefix = "{prefix}"', f'upstream = "{upstream}"']
    for key, value in options.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def start_regd(
    scratch: Path,
    mirrors: str,
    *,
    database_url: str | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RegdServer:
    scratch.mkdir(parents=True, exist_ok=True)
    config = scratch / "regd.toml"
    config.write_text(mirrors)
    server = RegdServer(
        data_dir=data_dir or scratch / "data",
        database_url=database_url,
        scratch=scratch,
        log_level="info",
        env={"REGD_CONFIG": str(config), **(env or {})},
    )
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


def seed(skopeo: Skopeo, image: LayoutImage, server: DistributionServer, name: str) -> None:
    skopeo.copy(image.ref, f"docker://{server.host}/{name}", "--all", "--preserve-digests")


def poll(check: Any, what: str, deadline: float = DEADLINE) -> Any:
    """`check()`'s first truthy answer, asked until `deadline` seconds have passed."""
    end = time.monotonic() + deadline
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what} after {deadline:.0f} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def module_scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mirror")


@pytest.fixture(scope="module")
def skopeo(module_scratch: Path) -> Skopeo:
    return Skopeo(module_scratch / "skopeo")


@pytest.fixture(scope="session")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    scratch = tmp_path_factory.mktemp("mirror-image")
    return build_image(
        scratch / "layout", "v1", files=machine_files(scratch / "files", unique=b"mirror")
    )


@pytest.fixture(scope="session")
def multi_image(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    scratch = tmp_path_factory.mktemp("mirror-index")
    index, _ = build_multiplatform(scratch / "layout", "multi", scratch / "files")
    return index
