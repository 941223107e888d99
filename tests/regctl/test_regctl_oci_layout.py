"""regctl copy to and from OCI image layout directories (`oci:DIR[:TAG]`), with umoci as
the independent reader and writer of layouts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from regd.client import MONOLITHIC_LIMIT, RegistryClient
from regd.oci.digest import Digest
from regd.oci.reference import Reference
from tests.helpers.servers import ServerProcess
from tests.regctl import support as content
from tests.regctl.support import CliResult

Cli = Callable[..., CliResult]


def umoci(*args: str) -> str:
    if shutil.which("umoci") is None:
        pytest.fail("umoci is not installed (scripts/setup installs it)", pytrace=False)
    done = subprocess.run(["umoci", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def manifest_bytes(host: str, repository: str, identifier: str | Digest) -> bytes:
    async def work() -> bytes:
        async with RegistryClient() as client:
            if isinstance(identifier, Digest):
                target = Reference(host, repository, None, identifier)
            else:
                target = Reference(host, repository, identifier)
            return (await client.get_manifest(target)).data

    return trio.run(work)


def blob_path(layout: Path, digest: str | Digest) -> Path:
    algorithm, _, hex_ = str(digest).partition(":")
    return layout / "blobs" / algorithm / hex_


def test_index_round_trips_through_a_layout(
    cli: Cli, registry_server: ServerProcess, tmp_path: Path
) -> None:
    big = os.urandom(MONOLITHIC_LIMIT + 4321)

    async def build() -> tuple[content.Pushed, list[content.Pushed]]:
        async with RegistryClient() as client:
            await content.push_image(client, registry_server.host, "big", "v1", layers=[big])
            return await content.push_index(client, registry_server.host, "multi", "v2")

    index, children = trio.run(build)
    layout = tmp_path / "layout"
    pulled = cli("copy", f"docker://{registry_server.host}/multi:v2", f"oci:{layout}", "--json")
    assert pulled.code == 0, pulled
    assert pulled.json()["digest"] == str(index.digest)
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    assert [
        (e["digest"], e["annotations"]["org.opencontainers.image.ref.name"]) for e in entries
    ] == [(str(index.digest), "v2")]
    assert blob_path(layout, index.digest).read_bytes() == index.data
    for child in children:
        assert blob_path(layout, child.digest).read_bytes() == child.data
    # umoci reads what regctl wrote.
    assert umoci("ls", "--layout", str(layout)).split() == ["v2"]

    # A second image joins the same layout under its own name; a large layer streams.
    assert cli("copy", f"{registry_server.host}/big:v1", f"oci:{layout}:big").code == 0
    assert sorted(umoci("ls", "--layout", str(layout)).split()) == ["big", "v2"]

    pushed = cli("copy", f"oci:{layout}:v2", f"{registry_server.host}/back", "--json")
    assert pushed.code == 0, pushed
    assert pushed.json()["destination"] == f"{registry_server.host}/back:v2"
    assert manifest_bytes(registry_server.host, "back", "v2") == index.data
    for child in children:
        assert manifest_bytes(registry_server.host, "back", child.digest) == child.data
    assert cli("copy", f"oci:{layout}:big", f"{registry_server.host}/back-big:v1").code == 0
    assert manifest_bytes(registry_server.host, "back-big", "v1") == manifest_bytes(
        registry_server.host, "big", "v1"
    )

    # One platform of the layout's index: that manifest itself.
    arm = cli(
        "copy",
        f"oci:{layout}:v2",
        f"{registry_server.host}/arm:v2",
        "--platform",
        "linux/arm64",
        "--json",
    )
    assert arm.code == 0, arm
    assert arm.json()["digest"] == str(children[1].digest)
    assert manifest_bytes(registry_server.host, "arm", "v2") == children[1].data


def test_umoci_image_is_pushed_and_pulled_back(
    cli: Cli, registry_server: ServerProcess, tmp_path: Path
) -> None:
    image = tmp_path / "image"
    umoci("init", "--layout", str(image))
    umoci("new", "--image", f"{image}:latest")
    payload = tmp_path / "greeting"
    payload.write_bytes(os.urandom(200_000))
    umoci("insert", "--image", f"{image}:latest", str(payload), "/etc/greeting")
    top = json.loads((image / "index.json").read_text())["manifests"][0]["digest"]

    pushed = cli("copy", f"oci:{image}:latest", f"{registry_server.host}/umoci/app:1.0", "--json")
    assert pushed.code == 0, pushed
    report = pushed.json()
    assert report["digest"] == top
    assert report["blobs"]["copied"] == 2  # the config and the inserted layer
    assert report["bytesCopied"] > 0
    again = cli("copy", f"oci:{image}", f"{registry_server.host}/umoci/app:1.0", "--json").json()
    assert again["blobs"] == {"copied": 0, "skipped": 2, "mounted": 0}

    back = tmp_path / "back"
    assert cli("copy", f"{registry_server.host}/umoci/app:1.0", f"oci:{back}:restored").code == 0
    umoci("unpack", "--rootless", "--image", f"{back}:restored", str(tmp_path / "bundle"))
    restored = tmp_path / "bundle" / "rootfs" / "etc" / "greeting"
    assert restored.read_bytes() == payload.read_bytes()


def test_layout_errors_are_one_line(
    cli: Cli, registry_server: ServerProcess, tmp_path: Path
) -> None:
    missing = cli("copy", f"oci:{tmp_path / 'nothing'}:x", f"{registry_server.host}/a:b")
    assert missing.code == 1
    assert "is not an OCI layout: no index.json" in missing.err
    assert missing.err.count("\n") == 1
    image = tmp_path / "image"
    umoci("init", "--layout", str(image))
    umoci("new", "--image", f"{image}:latest")
    unknown = cli("copy", f"oci:{image}:nope", f"{registry_server.host}/a:b")
    assert unknown.code == 1
    assert "not found" in unknown.err
    both = cli("copy", f"oci:{image}", f"oci:{tmp_path / 'other'}")
    assert both.code == 2
    assert cli("copy", f"oci:{image}", f"{registry_server.host}/a", "--all-tags").code == 2
