"""gc, du, prune and rm-repo against a real regd, and their bad input."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import trio

from regd.client import RegistryClient
from regd.oci.digest import Digest
from regd.oci.reference import Reference
from tests.helpers.servers import DistributionServer, RegdServer
from tests.helpers.volumes import tmpfs
from tests.regctl import support as content
from tests.regctl.support import CliResult

Cli = Callable[..., CliResult]


def push(server: RegdServer, repository: str, tag: str, layer: bytes | None = None) -> None:
    async def work() -> None:
        async with RegistryClient() as client:
            await content.push_image(
                client, server.host, repository, tag, layers=[layer or os.urandom(512)]
            )

    trio.run(work)


def push_loose_blob(server: RegdServer, repository: str, data: bytes) -> Digest:
    async def work() -> Digest:
        async with RegistryClient() as client:
            return await content.push_blob(client, server.host, repository, data)

    return trio.run(work)


def blob_exists(server: RegdServer, repository: str, digest: Digest) -> bool:
    async def work() -> bool:
        async with RegistryClient() as client:
            ref = Reference(server.host, repository, None, digest)
            return await client.blob_size(ref) is not None

    return trio.run(work)


def test_gc_dry_run_and_real(regd_registry: RegdServer, cli: Cli) -> None:
    push(regd_registry, "app", "v1")
    loose = push_loose_blob(regd_registry, "app", b"garbage bytes")
    r = cli("gc", regd_registry.host, "--dry-run", "--grace", "0s", "--json")
    assert r.code == 0, r.err
    plan = json.loads(r.out)
    assert plan["dry_run"] is True
    assert [b["digest"] for b in plan["blobs"]] == [str(loose)]
    assert blob_exists(regd_registry, "app", loose)
    r = cli("gc", regd_registry.host, "--grace", "0")
    assert r.code == 0, r.err
    assert "freed 13 B: 0 manifests, 1 blob," in r.out
    assert not blob_exists(regd_registry, "app", loose)


def test_gc_delete_untagged(regd_registry: RegdServer, cli: Cli) -> None:
    push(regd_registry, "app", "v1")
    push(regd_registry, "app", "v1")  # the first image is now untagged
    r = cli("gc", regd_registry.host, "--grace", "0", "--delete-untagged", "--json")
    assert r.code == 0, r.err
    plan = json.loads(r.out)
    assert plan["totals"]["manifests"] == 1
    assert plan["repositories"]["app"]["manifests"] == 1


def test_du(regd_registry: RegdServer, cli: Cli) -> None:
    shared = os.urandom(4096)
    push(regd_registry, "one", "v1", shared)
    push(regd_registry, "two", "v1", shared)
    r = cli("du", regd_registry.host, "--json")
    assert r.code == 0, r.err
    usage = json.loads(r.out)
    names = [repo["name"] for repo in usage["repositories"]]
    assert names == ["one", "two"]
    for repo in usage["repositories"]:
        # The layer, and the identical config the helper writes, are in both.
        assert repo["shared"] >= 4096
        assert repo["size"] == repo["unique"] + repo["shared"]
        assert repo["tags"][0]["tag"] == "v1"
        assert repo["tags"][0]["shared"] == repo["shared"]
        assert repo["tags"][0]["unique"] == 0
    r = cli("du", f"{regd_registry.host}/one")
    assert r.code == 0, r.err
    assert "v1" in r.out
    assert "registry total" in r.out


def test_prune_and_rm_repo(regd_registry: RegdServer, cli: Cli) -> None:
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0", "stable"):
        push(regd_registry, "app", tag)
    r = cli(
        "prune",
        f"{regd_registry.host}/app",
        "--keep-last",
        "1",
        "--keep",
        "^stable$",
        "--dry-run",
        "--json",
    )
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert [t["tag"] for t in result["removed"]] == ["v1.2.0", "v1.1.0", "v1.0.0"]
    # ISO 8601, under the name ls --json gives the same moment.
    for tag in result["removed"]:
        assert "pushed_at" not in tag
        assert datetime.fromisoformat(tag["pushed"]).tzinfo is not None
    r = cli("prune", f"{regd_registry.host}/app", "--keep-last", "2", "--older-than", "0s")
    assert r.code == 0, r.err
    assert "2 tags removed, 2 kept" in r.out
    r = cli("rm-repo", f"{regd_registry.host}/app", "--dry-run")
    assert r.code == 0
    assert "would delete app and its 2 tags" in r.out
    r = cli("prune", f"{regd_registry.host}/app", "--keep-last", "1")
    assert r.code == 0, r.err
    assert "1 tag removed, 1 kept" in r.out
    r = cli("rm-repo", f"{regd_registry.host}/app", "--dry-run")
    assert "would delete app and its 1 tag\n" in r.out
    r = cli("rm-repo", f"{regd_registry.host}/app", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["manifests"] == 4
    r = cli("rm-repo", f"{regd_registry.host}/app")
    assert r.code == 1
    assert "NAME_UNKNOWN" in r.err
    assert len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "app"],
        ["prune", "app", "--keep", "("],
        ["prune", "app", "--keep-last", "-1"],
        ["prune", "app", "--older-than", "soon"],
        ["gc", "--grace", "1 hour"],
        ["rm-repo", "Bad/Name"],
        ["rm-repo", "app:tag"],
    ],
)
def test_bad_input_is_a_usage_error(cli: Cli, args: list[str]) -> None:
    r = cli(*args)
    assert r.code == 2, (args, r.err)
    assert r.err.startswith("regctl: error:")


def test_not_a_regd(distribution_registry: DistributionServer, cli: Cli) -> None:
    r = cli("gc", distribution_registry.host, "--dry-run")
    assert r.code == 1
    assert "has no regd admin API" in r.err


@pytest.mark.parametrize("as_json", [False, True])
def test_du_of_an_unknown_repository(regd_registry: RegdServer, cli: Cli, as_json: bool) -> None:
    # It used to exit 0 with the registry's total, as if the repository were empty.
    push(regd_registry, "app", "v1")
    r = cli("du", f"{regd_registry.host}/nonexist/x", *(["--json"] if as_json else []))
    assert r.code == 1
    assert r.out == ""
    assert r.err.strip() == (
        f"regctl: error: repository nonexist/x is not known to {regd_registry.host}"
    )
    r = cli("du", f"{regd_registry.host}/app")
    assert r.code == 0, r.err
    assert "app:" in r.out


def test_unreachable(cli: Cli) -> None:
    r = cli("du", "127.0.0.1:1")
    assert r.code == 1
    assert "127.0.0.1:1" in r.err


def test_verify(regd_registry: RegdServer, cli: Cli) -> None:
    push(regd_registry, "app", "v1")
    r = cli("verify", regd_registry.host)
    assert r.code == 0, r.err
    assert "healthy: 2 blobs checked" in r.out
    loose = push_loose_blob(regd_registry, "app", b"soon corrupt")
    blob = regd_registry.data_dir / "docker/registry/v2/blobs/sha256" / loose.hex[:2] / loose.hex
    (blob / "data").write_bytes(b"corrupted!!!")
    r = cli("verify", regd_registry.host, "--json")
    assert r.code == 1
    assert [e["digest"] for e in json.loads(r.out)["corrupt"]] == [str(loose)]
    r = cli("verify", regd_registry.host, "--repair")
    assert r.code == 0, r.err
    assert not blob_exists(regd_registry, "app", loose)


def test_ls_sorts_regd_tags_by_push_time(regd_registry: RegdServer, cli: Cli) -> None:
    # Last-Modified has one-second resolution. Rather than wait out the clock between
    # pushes, the test moves each tag's push time back in regd's database. The time order
    # (newest first) is neither the names' order nor its reverse.
    ages = {"b-oldest": 3600.0, "c-middle": 1800.0, "a-newest": 0.0}
    for tag in ages:
        push(regd_registry, "timed", tag)
    with contextlib.closing(sqlite3.connect(regd_registry.data_dir / "regd.db")) as db, db:
        for tag, age in ages.items():
            db.execute("UPDATE tags SET updated_at = updated_at - ? WHERE name = ?", (age, tag))
    r = cli("ls", f"{regd_registry.host}/timed", "--sort", "time", "--json")
    assert r.code == 0, r.err
    tags = r.json()["tags"]
    assert [t["tag"] for t in tags] == ["a-newest", "c-middle", "b-oldest"]
    pushed = {t["tag"]: datetime.fromisoformat(t["pushed"]) for t in tags}
    # The times shown are regd's (to the second), not the order of the answers.
    assert abs((pushed["a-newest"] - pushed["b-oldest"]).total_seconds() - 3600) <= 1
    assert abs((pushed["a-newest"] - pushed["c-middle"]).total_seconds() - 1800) <= 1


ADMIN_TOKEN = "a-long-admin-token-0123456789"


def test_admin_token_is_a_global_option_and_its_refusal_names_it(
    regd_factory: Callable[..., RegdServer], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = regd_factory(env={"REGD_ADMIN_TOKEN": ADMIN_TOKEN})
    push(server, "app", "v1")
    refused = cli("du", server.host)
    assert refused.code == 1, refused
    line = refused.err.strip()
    for needle in ("HTTP 401", "--admin-token", "$REGCTL_ADMIN_TOKEN"):
        assert needle in line
    assert "regctl login" not in line
    # Global: before the command, as every other global option.
    assert cli("--admin-token", ADMIN_TOKEN, "du", server.host, "--json").code == 0
    assert cli("--admin-token", ADMIN_TOKEN, "gc", server.host, "--dry-run").code == 0
    monkeypatch.setenv("REGCTL_ADMIN_TOKEN", ADMIN_TOKEN)
    assert cli("prune", f"{server.host}/app", "--keep-last", "1", "--dry-run").code == 0


def test_grace_period_holdback_is_reported_after_rm_repo(
    regd_registry: RegdServer, cli: Cli
) -> None:
    layer = os.urandom(300_000)
    push(regd_registry, "doomed", "v1", layer)
    assert cli("rm-repo", f"{regd_registry.host}/doomed").code == 0

    plan = cli("gc", regd_registry.host, "--dry-run")
    assert plan.code == 0, plan
    assert "would free 0 B" in plan.out
    assert "held back by the 1h grace period" in plan.out
    assert "regctl gc --grace 0" in plan.out
    as_json = cli("gc", regd_registry.host, "--dry-run", "--json").json()
    assert as_json["totals"]["held_bytes"] >= len(layer)
    assert as_json["totals"]["held_blobs"] == 2  # the layer and the config

    usage = cli("du", regd_registry.host)
    assert "gc would free 0 B now" in usage.out
    assert "held back by the 1h grace period" in usage.out
    usage_json = cli("du", regd_registry.host, "--json").json()
    assert usage_json["held_bytes"] == as_json["totals"]["held_bytes"]
    assert usage_json["grace_seconds"] == 3600

    freed = cli("gc", regd_registry.host, "--grace", "0")
    assert freed.code == 0, freed
    assert "held back" not in freed.out
    assert cli("gc", regd_registry.host, "--json").json()["totals"]["held_bytes"] == 0


def test_status_shows_the_free_space_of_regds_volume(
    regd_registry: RegdServer, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGCTL_REGISTRY", regd_registry.host)
    r = cli("status", "--json")
    assert r.code == 0, r.err
    info = r.json()
    st = os.statvfs(regd_registry.data_dir)
    assert info["volumeBytes"] == st.f_blocks * st.f_frsize
    assert 0 < info["freeBytes"] <= info["volumeBytes"]
    assert info["freePercent"] == round(100 * info["freeBytes"] / info["volumeBytes"], 1)
    human = cli("status")
    assert human.code == 0, human.err
    line = next(x for x in human.out.splitlines() if x.startswith("free space:"))
    assert " of " in line
    assert line.endswith(" %)") or "low" in line


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, so the test can fill the volume regd writes to."""
    with tmpfs(tmp_path / "volume", "16m") as mountpoint:
        yield mountpoint


def test_status_warns_when_regds_volume_is_nearly_full(
    regd_factory: Callable[..., RegdServer],
    small_data_dir: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = regd_factory(data_dir=small_data_dir / "data")
    monkeypatch.setenv("REGCTL_REGISTRY", server.host)
    roomy = cli("status")
    assert roomy.code == 0, roomy.err
    assert "low" not in roomy.out
    # Leave about 1 MiB of the 16: under a tenth.
    st = os.statvfs(small_data_dir)
    (small_data_dir / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 1024 * 1024))
    r = cli("status", "--json")
    assert r.code == 0, r.err
    assert r.json()["volumeBytes"] == 16 * 1024 * 1024
    assert r.json()["freePercent"] < 10
    line = next(x for x in cli("status").out.splitlines() if x.startswith("free space:"))
    assert "of 16.0 MiB" in line
    assert "low, pushes fail when it runs out" in line
