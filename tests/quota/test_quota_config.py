"""`[[quota]]` tables: what the configuration accepts, and one clear line for what it does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regd.config import Config, QuotaRule, load
from regd.errors import ConfigError


def from_toml(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "regd.toml"
    path.write_text(text)
    return load(file=path, env={})


def test_quota_tables_with_sizes_in_any_unit(tmp_path: Path) -> None:
    config = from_toml(
        tmp_path,
        """
        quota_refresh = "10s"
        maintenance_refresh = 1
        [[quota]]
        repositories = "team/**"
        limit = "50GiB"
        [[quota]]
        repositories = "ci/*"
        limit = "1.5 GB"
        [[quota]]
        repositories = "exact"
        limit = 1024
        """,
    )
    assert config.quota == (
        QuotaRule("team/**", 50 * 1024**3),
        QuotaRule("ci/*", 1_500_000_000),
        QuotaRule("exact", 1024),
    )
    assert (config.quota_refresh, config.maintenance_refresh) == (10.0, 1.0)
    # A worker process gets the same rules through its environment.
    env = config.to_env()
    assert json.loads(env["REGD_QUOTA"])[0] == {"repositories": "team/**", "limit": 50 * 1024**3}
    assert load(env=env).quota == config.quota


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('repositories = "a/**"\nlimit = "lots"', "invalid size 'lots'"),
        ('repositories = "a/**"\nlimit = 0', "at least 1 byte"),
        ('repositories = "a/**"\nlimit = true', "invalid size True"),
        ('repositories = "a/**"', "needs repositories (a pattern string) and limit"),
        ('repositories = "{user}/**"\nlimit = 5', "{user} has no meaning in a quota pattern"),
        ('repositories = "A B"\nlimit = 5', "bad repository pattern 'A B'"),
        ('repositories = "a/**"\nlimit = 5\nmax = 6', "unknown key 'max'"),
    ],
)
def test_bad_quota_tables_are_one_line(tmp_path: Path, table: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_toml(tmp_path, f"[[quota]]\n{table}\n")
    message = str(caught.value)
    assert problem in message
    assert "quota[0]" in message
    assert "\n" not in message


def test_a_pattern_given_two_quotas_is_refused(tmp_path: Path) -> None:
    twice = '[[quota]]\nrepositories = "a/**"\nlimit = 5\n' * 2
    with pytest.raises(ConfigError, match=r"quota\[1\]: a second quota for 'a/\*\*'"):
        from_toml(tmp_path, twice)


def test_quotas_from_the_environment_are_json() -> None:
    config = load(env={"REGD_QUOTA": '[{"repositories": "x/**", "limit": "2KiB"}]'})
    assert config.quota == (QuotaRule("x/**", 2048),)
    with pytest.raises(ConfigError, match="REGD_QUOTA: quota must be a JSON list"):
        load(env={"REGD_QUOTA": "x/**=5"})
