"""Configuration: precedence (flags > environment > file > defaults) and validation."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import pytest

from regd.config import (
    WORKERS_CAP,
    Config,
    RetentionRule,
    default_workers,
    load,
    usable_cpus,
)
from regd.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    config = load(env={"HOME": str(tmp_path)})
    assert config.addr == "127.0.0.1:5000"
    assert config.workers == default_workers("filesystem", usable_cpus())
    assert config.database is None
    assert config.database_url.startswith("sqlite:///")
    assert config.gc_interval == 0
    assert config.retention == ()


@pytest.mark.parametrize(
    ("cpus", "storage", "workers"),
    [
        (1, "filesystem", 1),
        (2, "filesystem", 2),
        (WORKERS_CAP + 8, "filesystem", WORKERS_CAP),
        (WORKERS_CAP + 8, "s3", WORKERS_CAP),
        (4, "memory", 1),
    ],
    ids=["one-cpu", "two-cpus", "past-the-cap", "s3-past-the-cap", "memory"],
)
def test_default_workers(cpus: int, storage: str, workers: int) -> None:
    assert default_workers(storage, cpus) == workers


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu.max": "nonsense"}, None),
    ],
    ids=["none", "v2-max", "v2-1.5", "v2-0.5", "v1-none", "v1-one", "unreadable"],
)
def test_usable_cpus_honours_a_cgroup_quota(
    tmp_path: Path, files: dict[str, str], limit: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if limit is None else min(affinity, limit)
    assert usable_cpus(tmp_path) == expected


def test_memory_storage_resolves_the_default_to_one(tmp_path: Path) -> None:
    # A default must not make the memory driver refuse to start; a setting still may.
    assert load(env={"HOME": str(tmp_path), "REGD_STORAGE": "memory"}).workers == 1
    with pytest.raises(ConfigError, match="memory storage"):
        load(env={"HOME": str(tmp_path), "REGD_STORAGE": "memory", "REGD_WORKERS": "2"})
    assert load(env={"HOME": str(tmp_path), "REGD_WORKERS": "1"}).workers == 1


def test_precedence(tmp_path: Path) -> None:
    file = tmp_path / "regd.toml"
    file.write_text('addr = "127.0.0.1:7000"\nworkers = 3\nlog_level = "debug"\ngc_grace = "2h"\n')
    env = {"REGD_WORKERS": "2", "REGD_LOG_LEVEL": "warning", "REGD_DATA_DIR": str(tmp_path)}
    config = load(file=file, env=env, flags={"workers": 4, "addr": None})
    assert config.addr == "127.0.0.1:7000"  # file
    assert config.log_level == "warning"  # env beats file
    assert config.workers == 4  # flag beats env
    assert config.gc_grace == 7200
    assert config.data_dir == tmp_path
    # REGD_CONFIG names the file when no flag does.
    assert load(env={"REGD_CONFIG": str(file)}).workers == 3


def test_retention_rules(tmp_path: Path) -> None:
    file = tmp_path / "regd.toml"
    file.write_text(
        "[[retention]]\n"
        'repositories = "ci/.*"\nkeep_last = 10\nolder_than = "30d"\n'
        "[[retention]]\n"
        'repositories = ".*"\nkeep = "^(latest|v\\\\d+)$"\n'
    )
    config = load(file=file, env={})
    assert config.retention == (
        RetentionRule("ci/.*", keep_last=10, older_than=30 * 86400),
        RetentionRule(".*", keep="^(latest|v\\d+)$"),
    )
    # Workers receive it through the environment.
    again = load(env=config.to_env())
    assert again.retention == config.retention
    assert again == config


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('addr = "nope"', "addr"),
        ("workers = 0", "workers"),
        ('log_level = "loud"', "log_level"),
        ('database = "mysql://x"', "database"),
        ('storage = "tape"', "storage"),
        ('gc_grace = "soon"', "duration"),
        ("gc_interval = -1", "duration"),
        ('admin_token = "short"', "admin_token"),
        ("colour = 1", "unknown setting"),
        ("[[retention]]\nkeep_last = 1", "repositories"),
        ('[[retention]]\nrepositories = "("\nkeep_last = 1', "regular expression"),
        ('[[retention]]\nrepositories = ".*"', "needs keep_last"),
        ('[[retention]]\nrepositories = ".*"\nkeep_last = -2', "keep_last"),
        ('[[retention]]\nrepositories = ".*"\nkeep_last = 1\nextra = 2', "unknown keys"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_invalid_settings(tmp_path: Path, toml: str, message: str) -> None:
    file = tmp_path / "regd.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load(file=file, env={})


def test_invalid_environment() -> None:
    with pytest.raises(ConfigError, match="REGD_WORKERS"):
        load(env={"REGD_WORKERS": "many"})
    with pytest.raises(ConfigError, match="REGD_ACCESS_LOG"):
        load(env={"REGD_ACCESS_LOG": "maybe"})
    with pytest.raises(ConfigError, match="retention"):
        load(env={"REGD_RETENTION": "{not json"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(file=tmp_path / "absent.toml", env={})


def test_memory_storage_needs_one_worker() -> None:
    with pytest.raises(ConfigError, match="memory"):
        load(env={"REGD_STORAGE": "memory", "REGD_WORKERS": "2"})
    assert isinstance(load(env={"REGD_STORAGE": "memory"}), Config)


def test_limits_from_every_source(tmp_path: Path) -> None:
    file = tmp_path / "regd.toml"
    file.write_text('header_timeout = "5s"\nmax_connections = 100\n')
    env = {"REGD_BODY_TIMEOUT": "2m", "REGD_MAX_CONNECTIONS_PER_CLIENT": "0"}
    config = load(file=file, env=env, flags={"max_connections": 50})
    assert config.header_timeout == 5
    assert config.body_timeout == 120
    assert config.max_connections == 50
    assert config.max_connections_per_client == 0
    assert load(env=config.to_env()) == config


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REGD_MAX_CONNECTIONS": "0"}, "max_connections must be at least 1"),
        ({"REGD_MAX_CONNECTIONS_PER_CLIENT": "-1"}, "must not be negative"),
        ({"REGD_HEADER_TIMEOUT": "0"}, "header_timeout must be more than 0"),
        ({"REGD_MAX_CONNECTIONS": "many"}, "invalid value"),
        ({"REGD_ADDR": "127.0.0.1:99999"}, "invalid port '99999'"),
        ({"REGD_ADDR": "127.0.0.1"}, "HOST:PORT"),
    ],
)
def test_limits_and_addr_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(env=env)


def test_all_interfaces_spelling() -> None:
    config = load(env={"REGD_ADDR": ":5000"})
    assert config.bind == "0.0.0.0:5000"
    assert load(env={"REGD_ADDR": "[::1]:5000"}).bind == "[::1]:5000"


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    # The [auth] and [s3] tables' settings are spelled as TOML keys: auth_htpasswd is
    # `auth.htpasswd`, s3_bucket `s3.bucket`.
    keys = [f.name.replace("auth_", "auth.", 1).replace("s3_", "s3.", 1) for f in fields(Config)]
    missing = [key for key in keys if f"| `{key}` |" not in readme]
    assert missing == []
