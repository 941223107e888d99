"""Credentials in docker's `config.json` format, and the registry auth challenges.

docker, podman, skopeo and containerd all read `~/.docker/config.json`; keeping our
credentials there means a `docker login` works for regctl and a `regctl login` for them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regd.client.errors import ClientError

# Docker Hub's historical credential key; docker itself still writes this one.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str
    # An identity token from `docker login` against a token server: sent as a refresh token.
    identity_token: str | None = None


def normalize_host(key: str) -> str:
    """`https://host:port/v1/` and `host:port` name the same registry."""
    text = key.strip()
    text = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text)
    text = text.split("/", 1)[0].lower()
    return "docker.io" if text in _DOCKER_HUB_ALIASES else text


def docker_config_dir() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".docker"


def _podman_auth_files() -> list[Path]:
    # podman writes here by default; reading them lets `podman login` serve regctl too.
    files: list[Path] = []
    if env := os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env))
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(runtime) / "containers" / "auth.json")
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    files.append(Path(config_home) / "containers" / "auth.json")
    return files


def _decode_auth(value: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(value, validate=False).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class CredentialStore:
    """Reads and writes `config.json`; falls back to podman's auth files when reading."""

    def __init__(self, config_dir: Path | None = None, *, read_podman: bool = True) -> None:
        self.config_dir = config_dir if config_dir is not None else docker_config_dir()
        self._read_podman = read_podman and config_dir is None

    @property
    def path(self) -> Path:
        return self.config_dir / "config.json"

    def _load(self, path: Path) -> dict[str, Any]:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror}") from None
        try:
            doc = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ClientError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ClientError(f"{path} must hold a JSON object")
        return doc

    def get(self, host: str) -> Credentials | None:
        wanted = normalize_host(host)
        files = [self.path] + (_podman_auth_files() if self._read_podman else [])
        for path in files:
            doc = self._load(path)
            helper = (doc.get("credHelpers") or {}).get(wanted) or doc.get("credsStore")
            entry = self._find_entry(doc, wanted)
            if entry is not None:
                found = self._from_entry(entry)
                if found is not None:
                    return found
            if isinstance(helper, str) and helper:
                found = self._from_helper(helper, wanted)
                if found is not None:
                    return found
        return None

    @staticmethod
    def _find_entry(doc: dict[str, Any], wanted: str) -> dict[str, Any] | None:
        auths = doc.get("auths")
        if not isinstance(auths, dict):
            return None
        for key, entry in auths.items():
            if isinstance(entry, dict) and normalize_host(key) == wanted:
                return entry
        return None

    @staticmethod
    def _from_entry(entry: dict[str, Any]) -> Credentials | None:
        token = entry.get("identitytoken")
        raw = entry.get("auth")
        if isinstance(raw, str) and raw:
            pair = _decode_auth(raw)
            if pair is not None:
                return Credentials(pair[0], pair[1], token if isinstance(token, str) else None)
        user, password = entry.get("username"), entry.get("password")
        if isinstance(user, str) and isinstance(password, str):
            return Credentials(user, password)
        return None

    @staticmethod
    def _from_helper(helper: str, host: str) -> Credentials | None:
        server = DOCKER_HUB_KEY if host == "docker.io" else host
        try:
            # Helpers are tiny local programs; running one synchronously is what docker does.
            done = subprocess.run(
                [f"docker-credential-{helper}", "get"],
                input=server.encode(),
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        try:
            doc = json.loads(done.stdout)
            user, secret = doc["Username"], doc["Secret"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(user, str) or not isinstance(secret, str):
            return None
        if user == "<token>":
            return Credentials("", "", secret)
        return Credentials(user, secret)

    def save(self, host: str, credentials: Credentials) -> None:
        doc = self._load(self.path)
        auths = doc.setdefault("auths", {})
        if not isinstance(auths, dict):
            raise ClientError(f"{self.path}: 'auths' must be an object")
        wanted = normalize_host(host)
        for key in [k for k in auths if normalize_host(k) == wanted]:
            del auths[key]
        pair = f"{credentials.username}:{credentials.password}".encode()
        key = DOCKER_HUB_KEY if wanted == "docker.io" else wanted
        auths[key] = {"auth": base64.b64encode(pair).decode()}
        self._write(doc)

    def remove(self, host: str) -> bool:
        doc = self._load(self.path)
        auths = doc.get("auths")
        if not isinstance(auths, dict):
            return False
        wanted = normalize_host(host)
        keys = [k for k in auths if normalize_host(k) == wanted]
        for key in keys:
            del auths[key]
        if keys:
            self._write(doc)
        return bool(keys)

    def _write(self, doc: dict[str, Any]) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so a crash never leaves docker with a truncated config,
        # and 0600 because the file holds passwords.
        fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=self.config_dir)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out, indent="\t")
                out.write("\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'\s*([a-zA-Z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` value: `Bearer realm="..",service="..",scope=".."`."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        match = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*", text[pos:])
        if not match:
            break
        scheme = match.group(1).lower()
        pos += match.end()
        params: dict[str, str] = {}
        while pos < len(text):
            param = _PARAM.match(text, pos)
            if not param:
                break
            value = param.group(2) if param.group(2) is not None else param.group(3)
            params[param.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = param.end()
        out.append(Challenge(scheme, params))
    return out
