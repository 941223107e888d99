"""regctl's listing, inspection, deletion and login commands, and their errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import trio

from regd.client import RegistryClient
from regd.oci import mediatypes as mt
from regd.oci.digest import Digest
from regd.oci.reference import Reference
from tests.helpers.servers import DistributionServer, ServerProcess
from tests.regctl import support as content
from tests.regctl.support import CliResult

Cli = Callable[..., CliResult]


@pytest.fixture
def populated(registry_server: ServerProcess) -> dict[str, content.Pushed]:
    async def build() -> dict[str, content.Pushed]:
        async with RegistryClient() as client:
            image = await content.push_image(
                client, registry_server.host, "team/app", "v1", layers=[b"a" * 3000, b"b" * 500]
            )
            index, _children = await content.push_index(client, registry_server.host, "team/app")
            sbom = await content.push_artifact(client, registry_server.host, "team/app", image)
            await content.push_image(client, registry_server.host, "other", "latest")
            return {"image": image, "index": index, "sbom": sbom}

    return trio.run(build)


def assert_one_line_error(result: CliResult, code: int, *needles: str) -> None:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("regctl: error: ")
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_ls_repositories(cli: Cli, registry_server: ServerProcess, populated: object) -> None:
    result = cli("ls", registry_server.host, "--json")
    assert result.code == 0
    assert result.json() == {
        "registry": registry_server.host,
        "repositories": ["other", "team/app"],
    }
    quiet = cli("ls", registry_server.host, "-q")
    assert quiet.out.split() == ["other", "team/app"]


def test_ls_tags_json_fields(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    result = cli("ls", f"{registry_server.host}/team/app", "--json")
    assert result.code == 0, result
    doc = result.json()
    assert doc["registry"] == registry_server.host
    assert doc["repository"] == "team/app"
    by_tag = {row["tag"]: row for row in doc["tags"]}
    expected = ["multi", "v1"]
    if registry_server.kind == "distribution":
        # No referrers API there: the artifact's push maintained the fallback tag.
        expected.append(f"sha256-{populated['image'].digest.hex}")
    assert [row["tag"] for row in doc["tags"]] == sorted(expected)
    v1 = by_tag["v1"]
    pushed = v1.pop("pushed")
    assert v1 == {
        "tag": "v1",
        "digest": str(populated["image"].digest),
        "mediaType": mt.OCI_MANIFEST,
        "size": populated["image"].size,
    }
    if registry_server.kind == "distribution":
        # Distribution sends no Last-Modified on manifests; regd sends the push time.
        assert pushed is None
    else:
        assert datetime.fromisoformat(pushed).year >= 2024
    assert by_tag["multi"]["mediaType"] == mt.OCI_INDEX
    assert by_tag["multi"]["digest"] == str(populated["index"].digest)
    by_time = cli("ls", f"{registry_server.host}/team/app", "--sort", "time", "-q")
    assert sorted(by_time.out.split()) == sorted(by_tag)


def test_ls_plain_table(cli: Cli, registry_server: ServerProcess, populated: object) -> None:
    result = cli("ls", f"{registry_server.host}/team/app")
    assert result.code == 0
    header, *rows = result.out.strip().splitlines()
    assert header.split() == ["TAG", "DIGEST", "TYPE", "SIZE", "PUSHED"]
    assert any(row.startswith("v1 ") and "oci manifest" in row for row in rows)


def test_inspect_image_json(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    image, sbom = populated["image"], populated["sbom"]
    result = cli("inspect", f"{registry_server.host}/team/app:v1", "--json")
    assert result.code == 0, result
    doc = result.json()
    assert doc["reference"] == f"{registry_server.host}/team/app:v1"
    assert doc["registry"] == registry_server.host
    assert doc["repository"] == "team/app"
    assert doc["tag"] == "v1"
    assert doc["digest"] == str(image.digest)
    assert doc["mediaType"] == mt.OCI_MANIFEST
    assert doc["size"] == image.size
    assert doc["subject"] is None
    manifest = json.loads(image.data)
    assert doc["layers"] == manifest["layers"]
    assert doc["totalSize"] == manifest["config"]["size"] + 3500
    summary = doc["config"]["summary"]
    assert doc["config"]["digest"] == manifest["config"]["digest"]
    assert summary == {
        "created": "2024-05-01T12:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "variant": None,
        "entrypoint": ["/bin/app"],
        "cmd": ["--serve"],
        "workingDir": None,
        "user": None,
        "env": ["PATH=/usr/bin", "MODE=test"],
        "labels": {"org.example.team": "registry"},
    }
    assert doc["referrersSource"] == ("api" if registry_server.kind == "regd" else "tag-schema")
    assert doc["referrers"] == [
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": str(sbom.digest),
            "size": sbom.size,
            "artifactType": content.SBOM_TYPE,
            "annotations": {"org.opencontainers.image.created": "2024-05-02T00:00:00Z"},
        }
    ]


def test_inspect_index_and_platform(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    result = cli("inspect", f"{registry_server.host}/team/app:multi", "--json")
    assert result.code == 0, result
    doc = result.json()
    assert doc["mediaType"] == mt.OCI_INDEX
    assert [m["platform"] for m in doc["manifests"]] == [
        "linux/amd64",
        "linux/arm64/v8",
        "linux/s390x",
    ]
    assert "layers" not in doc
    arm = cli(
        "inspect", f"{registry_server.host}/team/app:multi", "--platform", "linux/arm64", "--json"
    )
    arm_doc = arm.json()
    assert arm_doc["index"] == str(populated["index"].digest)
    assert arm_doc["config"]["summary"]["architecture"] == "arm64"
    assert arm_doc["digest"] == doc["manifests"][1]["digest"]
    human = cli("inspect", f"{registry_server.host}/team/app:multi")
    assert "linux/arm64/v8" in human.out
    missing = cli(
        "inspect", f"{registry_server.host}/team/app:multi", "--platform", "windows/amd64"
    )
    assert_one_line_error(missing, 1, "windows/amd64")


def test_artifact_inspect_shows_subject(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    result = cli("inspect", f"{registry_server.host}/team/app@{populated['sbom'].digest}", "--json")
    doc = result.json()
    assert doc["artifactType"] == content.SBOM_TYPE
    assert doc["subject"]["digest"] == str(populated["image"].digest)
    assert doc["config"]["summary"] is None
    assert doc["config"]["mediaType"] == mt.OCI_EMPTY


def test_digest_manifest_get_and_blob_get(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed], tmp_path: Path
) -> None:
    image = populated["image"]
    assert cli("digest", f"{registry_server.host}/team/app:v1").out.strip() == str(image.digest)
    as_json = cli("digest", f"{registry_server.host}/team/app:v1", "--json").json()
    assert as_json == {
        "reference": f"{registry_server.host}/team/app:v1",
        "digest": str(image.digest),
        "mediaType": mt.OCI_MANIFEST,
        "size": image.size,
    }
    pretty = cli("manifest", "get", f"{registry_server.host}/team/app:v1")
    assert json.loads(pretty.out) == json.loads(image.data)
    layer = json.loads(image.data)["layers"][0]["digest"]
    target = tmp_path / "layer.bin"
    got = cli("blob", "get", f"{registry_server.host}/team/app@{layer}", "-o", str(target))
    assert got.code == 0, got
    assert target.read_bytes() == b"a" * 3000


def test_platform_on_digest_and_manifest_get(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    entries = json.loads(populated["index"].data)["manifests"]
    arm64 = next(e for e in entries if e["platform"]["architecture"] == "arm64")
    ref = f"{registry_server.host}/team/app:multi"
    assert cli("digest", ref, "--platform", "linux/arm64").out.strip() == arm64["digest"]
    as_json = cli("digest", ref, "--platform", "linux/arm64/v8", "--json").json()
    assert (as_json["digest"], as_json["size"]) == (arm64["digest"], arm64["size"])
    raw = cli("manifest", "get", ref, "--platform", "linux/arm64", "--raw")
    assert raw.code == 0, raw
    assert str(Digest.of(raw.out.encode())) == arm64["digest"]
    pretty = cli("manifest", "get", ref, "--platform", "linux/arm64").out
    assert json.loads(pretty)["mediaType"] == mt.OCI_MANIFEST
    assert_one_line_error(
        cli("digest", ref, "--platform", "windows/amd64"), 1, "no manifest", "windows/amd64"
    )
    assert_one_line_error(
        cli("manifest", "get", f"{registry_server.host}/team/app:v1", "--platform", "linux/amd64"),
        1,
        "not an index",
    )


def test_tag_add_retags_without_moving_blobs(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    image = populated["image"]
    added = cli("tag", "add", f"docker://{registry_server.host}/team/app:v1", "stable", "prod")
    assert added.code == 0, added
    assert f"tagged {registry_server.host}/team/app:stable ({image.digest})" in added.out
    for tag in ("stable", "prod"):
        got = cli("manifest", "get", f"{registry_server.host}/team/app:{tag}", "--raw")
        assert got.out.encode() == image.data
    by_digest = cli(
        "tag", "add", f"{registry_server.host}/team/app@{image.digest}", "v1.0", "--json"
    )
    assert by_digest.json()["tagged"] == [
        {
            "reference": f"{registry_server.host}/team/app:v1.0",
            "tag": "v1.0",
            "digest": str(image.digest),
        }
    ]
    assert cli("tag", "add", f"{registry_server.host}/team/app:v1", "Bad:Tag").code == 2
    assert_one_line_error(cli("tag", "add", f"{registry_server.host}/team/app:nope", "x"), 1, "404")


def test_docker_transport_prefix_is_accepted(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    digest = cli("digest", f"docker://{registry_server.host}/team/app:v1")
    assert digest.out.strip() == str(populated["image"].digest), digest
    assert cli("ls", f"docker://{registry_server.host}/team/app", "-q").code == 0


def test_tag_rm(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    image = populated["image"]
    dry = cli("tag", "rm", f"{registry_server.host}/team/app:v1", "--dry-run", "--json")
    assert dry.code == 0
    assert dry.json() == {
        "dryRun": True,
        "deleted": [
            {
                "reference": f"{registry_server.host}/team/app:v1",
                "tag": "v1",
                "digest": str(image.digest),
            }
        ],
    }
    missing = cli("tag", "rm", f"{registry_server.host}/team/app:nope")
    assert_one_line_error(
        missing, 1, "HTTP 404", "MANIFEST_UNKNOWN", f"http://{registry_server.host}/v2/"
    )
    result = cli("tag", "rm", f"{registry_server.host}/team/app:v1")
    if registry_server.kind == "distribution":
        # Distribution deletes by digest only; the error says what to do instead.
        assert_one_line_error(
            result, 1, "HTTP 400", "DIGEST_INVALID", "regctl rm", str(image.digest)
        )
        return
    assert result.code == 0, result
    assert result.out.strip() == f"deleted {registry_server.host}/team/app:v1 ({image.digest})"
    tags = cli("ls", f"{registry_server.host}/team/app", "-q").out.split()
    assert "v1" not in tags
    assert "multi" in tags
    # The manifest itself stays, reachable by digest.
    assert cli("digest", f"{registry_server.host}/team/app@{image.digest}").code == 0


def test_rm_by_digest(
    cli: Cli, registry_server: ServerProcess, populated: dict[str, content.Pushed]
) -> None:
    image = populated["image"]
    target = f"{registry_server.host}/team/app@{image.digest}"

    async def second_tag() -> None:
        async with RegistryClient() as client:
            ref = Reference(registry_server.host, "team/app", "stable")
            await client.put_manifest(ref, image.data, image.media_type)

    trio.run(second_tag)
    dry = cli("rm", target, "--dry-run", "--json")
    assert dry.json() == {
        "dryRun": True,
        "deleted": [
            {
                "reference": target,
                "digest": str(image.digest),
                "mediaType": mt.OCI_MANIFEST,
                "size": image.size,
                "tags": ["stable", "v1"],
            }
        ],
    }
    # The dry run names every tag the deletion would take with it.
    dry = cli("rm", target, "--dry-run")
    assert dry.code == 0, dry.err
    assert "would delete tag stable" in dry.out
    assert "would delete tag v1" in dry.out
    assert cli("digest", f"{registry_server.host}/team/app:v1").code == 0
    done = cli("rm", target, "--json")
    assert done.code == 0
    assert done.json()["dryRun"] is False
    gone = cli("digest", f"{registry_server.host}/team/app:v1")
    assert_one_line_error(gone, 1, "404", "MANIFEST_UNKNOWN")
    again = cli("rm", target)
    assert_one_line_error(again, 1, "404", "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "UPPER/case"],
        ["inspect", "app:bad:tag:"],
        ["inspect", "app@sha256:abc"],
        ["ls", "a b"],
        ["rm", "127.0.0.1:5000/app:v1"],
        ["tag", "rm", "127.0.0.1:5000/app"],
        ["tag", "rm", f"127.0.0.1:5000/app@sha256:{'0' * 64}"],
        ["blob", "get", "127.0.0.1:5000/app:v1"],
        ["copy", "a:1", "b@sha256:" + "0" * 64],
        ["copy", "a:1", "b", "--all-tags"],
        ["copy", "a:1", "b", "--platform", "linux"],
        ["ls", "--sort", "size"],
        ["copy", "onlyone"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    assert_one_line_error(cli(*args), 2, "--help")


def test_ls_sort_time_of_repositories_is_refused(cli: Cli, registry_server: ServerProcess) -> None:
    # The catalog has no push times: sorting by them was silently ignored.
    result = cli("ls", registry_server.host, "--sort", "time")
    assert_one_line_error(result, 2, "--sort time", "repositories")


def test_unreachable_registry(cli: Cli) -> None:
    result = cli("ls", "127.0.0.1:1/app")
    assert_one_line_error(result, 1, "http://127.0.0.1:1/v2/app/tags/list", "connection refused")


def test_missing_repository_and_tag(cli: Cli, registry_server: ServerProcess) -> None:
    assert_one_line_error(
        cli("ls", f"{registry_server.host}/nothing"),
        1,
        "HTTP 404",
        "NAME_UNKNOWN",
        registry_server.host,
    )
    assert_one_line_error(
        cli("inspect", f"{registry_server.host}/nothing:v1"),
        1,
        "HTTP 404",
        "_UNKNOWN",
        registry_server.host,
    )


def test_debug_shows_traceback(cli: Cli) -> None:
    result = cli("--debug", "ls", "127.0.0.1:1/app")
    assert result.code == 1
    assert "Traceback" in result.err
    assert result.err.strip().splitlines()[-1].startswith("regctl: error: ")


def test_host_less_reference_uses_regctl_registry(
    cli: Cli, registry_server: ServerProcess, populated: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGCTL_REGISTRY", registry_server.host)
    assert cli("ls", "-q").out.split() == ["other", "team/app"]
    assert cli("digest", "team/app:v1").code == 0


def test_basic_auth_login_logout(
    cli: Cli, auth_registry: DistributionServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = auth_registry.host
    anonymous = cli("ls", host)
    assert_one_line_error(anonymous, 1, "HTTP 401", "UNAUTHORIZED", f"regctl login {host}")

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("wrong-password\n"))
    wrong = cli("login", host, "-u", "alice", "--password-stdin")
    assert_one_line_error(wrong, 1, f"login to {host} failed: wrong user name or password")
    assert "authentication required" not in wrong.err
    assert "regctl login" not in wrong.err
    config = tmp_path / "docker-config" / "config.json"
    assert not config.exists()

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("right-password\n"))
    good = cli("login", host, "-u", "alice", "--password-stdin")
    assert good.code == 0, good
    saved = json.loads(config.read_text())
    assert host in saved["auths"]

    async def push() -> None:
        async with RegistryClient() as client:
            await content.push_image(client, host, "private", "v1")

    trio.run(push)
    assert cli("ls", host, "--json").json()["repositories"] == ["private"]
    assert cli("logout", host).code == 0
    assert host not in json.loads(config.read_text())["auths"]
    assert_one_line_error(cli("ls", host), 1, "HTTP 401")
