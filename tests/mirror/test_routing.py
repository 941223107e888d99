"""`[[mirror]]` tables: what the configuration accepts, and which repository goes where."""

from __future__ import annotations

from pathlib import Path

import pytest

from regd.config import Config, MirrorConfig, load
from regd.errors import ConfigError, Denied
from regd.mirror import Routes


def _load(tmp_path: Path, text: str) -> tuple[MirrorConfig, ...]:
    path = tmp_path / "regd.toml"
    path.write_text(text)
    return load(file=path, env={}).mirror


def test_tables_become_mirrors_and_survive_the_trip_to_a_worker(tmp_path: Path) -> None:
    mirrors = _load(
        tmp_path,
        '[[mirror]]\nprefix = "docker.io"\nupstream = "https://registry-1.docker.io/"\n'
        'default = true\nmanifest_ttl = "10m"\nmax_size = "2GiB"\n'
        '[[mirror]]\nprefix = "ghcr.io"\nupstream = "https://ghcr.io"\n'
        'username = "me"\npassword = "secret"\n',
    )
    hub, ghcr = mirrors
    assert (hub.upstream, hub.default, hub.manifest_ttl, hub.max_size) == (
        "https://registry-1.docker.io",
        True,
        600.0,
        2 << 30,
    )
    assert (ghcr.username, ghcr.password, ghcr.max_size) == ("me", "secret", 0)
    env = Config(mirror=mirrors).to_env()
    assert load(env=env).mirror == mirrors


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        ('prefix = "Bad"\nupstream = "https://x.io"', "prefix must be a repository path"),
        ('prefix = "a"\nupstream = "ftp://x.io"', "upstream must be a registry's base URL"),
        ('prefix = "a"\nupstream = "https://x.io/v2/"', "upstream must be a registry's base URL"),
        ('prefix = "a"\nupstream = "https://x.io"\nusername = "u"', "given together"),
        ('prefix = "a"\nupstream = "https://x.io"\nmax_size = "lots"', "invalid size"),
        ('prefix = "a"\nupstream = "https://x.io"\ncolour = 1', "unknown key 'colour'"),
        ('prefix = "a"\nupstream = "https://x.io"\nca_cert = "/nonexistent.pem"', "ca_cert"),
    ],
)
def test_bad_tables_are_refused_with_one_line(tmp_path: Path, table: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        _load(tmp_path, f"[[mirror]]\n{table}\n")


@pytest.mark.parametrize(
    ("tables", "complaint"),
    [
        ((("a", False), ("a/b", False)), "overlap"),
        ((("a", True), ("b", True)), "only one mirror may be the default"),
        ((("a", False), ("a", False)), "share a prefix"),
    ],
)
def test_prefixes_may_not_overlap_and_one_default_at_most(
    tmp_path: Path, tables: tuple[tuple[str, bool], ...], complaint: str
) -> None:
    text = "".join(
        f'[[mirror]]\nprefix = "{p}"\nupstream = "https://x.io"\ndefault = {str(d).lower()}\n'
        for p, d in tables
    )
    with pytest.raises(ConfigError, match=complaint):
        _load(tmp_path, text)


def test_routes(tmp_path: Path) -> None:
    routes = Routes(
        _load(
            tmp_path,
            '[[mirror]]\nprefix = "docker.io"\nupstream = "https://registry-1.docker.io"\n'
            "default = true\n"
            '[[mirror]]\nprefix = "ghcr.io"\nupstream = "https://ghcr.io"\n',
        )
    )
    hub = routes.find("docker.io/alpine")
    assert hub is not None
    assert (hub.upstream_repository, hub.prefixed) == ("library/alpine", True)
    ghcr = routes.find("ghcr.io/org/tool")
    assert ghcr is not None
    assert (ghcr.mirror.prefix, ghcr.upstream_repository) == ("ghcr.io", "org/tool")
    default = routes.find("library/alpine")
    assert default is not None
    assert (default.mirror.prefix, default.upstream_repository, default.prefixed) == (
        "docker.io",
        "library/alpine",
        False,
    )
    with pytest.raises(Denied, match=r"read-only mirror of https://ghcr\.io"):
        routes.refuse_push("ghcr.io/org/tool")
    routes.refuse_push("team/app")  # outside every prefix: pushes are welcome
