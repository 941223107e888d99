"""The `[auth]` table and `[[access]]` rules, and what turns authentication on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from regd.auth.wiring import auth_enabled, build_authenticator, check_exposure
from regd.config import Config, TrustedIssuerConfig, load
from regd.errors import ConfigError
from regd.metadata import MetadataStore, sqlite_url
from regd.metadata import accounts as rows


def test_auth_table_and_workers_environment(tmp_path: Path) -> None:
    bundle = tmp_path / "issuer.pem"
    file = tmp_path / "regd.toml"
    file.write_text(
        "[auth]\n"
        f'htpasswd = "{tmp_path / "htpasswd"}"\n'
        'realm = "https://registry.example/auth/token"\n'
        'service = "registry.example"\n'
        'token_ttl = "10m"\n'
        "open = false\n"
        "[[auth.trust]]\n"
        f'issuer = "corp-auth"\nservice = "registry.example"\ncertificates = "{bundle}"\n'
        "[[access]]\n"
        'who = "group:ci"\nrepositories = "team/**"\nactions = ["pull", "push"]\n'
    )
    config = load(file=file, env={"REGD_DATA_DIR": str(tmp_path)})
    assert config.auth_htpasswd == tmp_path / "htpasswd"
    assert config.auth_service == "registry.example"
    assert config.auth_token_ttl == 600
    assert config.auth_keys_dir == tmp_path / "auth"
    assert config.auth_trust == (TrustedIssuerConfig("corp-auth", "registry.example", bundle),)
    assert config.access[0]["who"] == "group:ci"
    assert config.auth_configured
    assert load(env=config.to_env()) == config
    # Scalars from the environment too.
    env = load(env={"REGD_AUTH_OPEN": "1", "REGD_AUTH_SERVICE": "x", "REGD_DATA_DIR": "/d"})
    assert env.auth_open
    assert env.auth_service == "x"
    assert not env.auth_configured


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[auth]\ncolour = 1", "unknown setting auth.colour"),
        ('[auth]\ntoken_ttl = "1s"', "token_ttl"),
        ('[auth]\nrealm = "ftp://x"', "realm"),
        ('[[auth.trust]]\nissuer = "a"\nservice = "b"', "exactly one of certificates"),
        ('[[access]]\nwho = "x"\nactions = "fly"', "access rule 1: unknown action 'fly'"),
        ('[[access]]\nwho = "x"\nactions = "pull"', "need repositories"),
        ('[[access]]\nwho = "x"\nrepositories = "A/../b"\nactions = "pull"', "bad repository"),
    ],
)
def test_invalid_auth_settings(tmp_path: Path, toml: str, message: str) -> None:
    file = tmp_path / "regd.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match=message) as caught:
        load(file=file, env={})
    assert "\n" not in str(caught.value)


async def test_what_turns_authentication_on(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "regd.db")
    store = MetadataStore(url)
    store.create_schema()
    try:
        config = Config(data_dir=tmp_path, database=url)
        assert not auth_enabled(config, store)
        assert build_authenticator(config, store) is None
        exposed = Config(data_dir=tmp_path, database=url, addr="0.0.0.0:5000")
        with pytest.raises(ConfigError, match=r"0\.0\.0\.0:5000.*auth\.open = true"):
            check_exposure(exposed)
        check_exposure(Config(data_dir=tmp_path, database=url, addr="0.0.0.0:5000", auth_open=True))
        check_exposure(Config(data_dir=tmp_path, database=url, addr="[::1]:5000"))

        rule = {"who": "anonymous", "repositories": "**", "actions": "pull"}
        assert auth_enabled(Config(data_dir=tmp_path, access=(rule,)), store)
        await rows.add_account(store, "alice", "$2b$04$" + "x" * 53, [], time.time())
        assert auth_enabled(config, store)
        check_exposure(exposed)
        auth = build_authenticator(config, store)
        assert auth is not None
        assert (tmp_path / "auth").is_dir()  # the signing key was made
    finally:
        await store.aclose()
