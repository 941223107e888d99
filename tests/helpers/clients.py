"""The real clients the end-to-end tests drive: skopeo and podman.

Each gets a private policy, registries.conf, credentials file and temporary folder so that
nothing on the machine (a root's docker login, a mirror setting) changes what a test sees.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.helpers.oci import run_tool

CLIENT_TIMEOUT = 300.0


def _registries_conf(hosts: Iterable[str]) -> str:
    entries = "".join(f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n' for host in hosts)
    return 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n' + entries


class _Client:
    binary = ""

    def __init__(self, scratch: Path, insecure_hosts: Iterable[str] = ()) -> None:
        found = shutil.which(self.binary)
        if found is None:
            raise AssertionError(f"{self.binary} is not installed; run scripts/setup")
        self.path = found
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "tmp").mkdir(exist_ok=True)
        self.policy = scratch / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.auth = scratch / "auth.json"
        self.auth.write_text(json.dumps({"auths": {}}))
        self.registries = scratch / "registries.conf"
        self.allow(*insecure_hosts)

    def allow(self, *hosts: str) -> None:
        """Mark registries as plain HTTP (for commands that have no --tls-verify flag)."""
        known = getattr(self, "_hosts", [])
        self._hosts = [*known, *(h for h in hosts if h not in known)]
        self.registries.write_text(_registries_conf(self._hosts))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "REGISTRY_AUTH_FILE": str(self.auth),
                "CONTAINERS_REGISTRIES_CONF": str(self.registries),
                "TMPDIR": str(self.scratch / "tmp"),
            }
        )
        return env

    def base_args(self) -> list[str]:
        return [self.path]

    def __call__(self, *args: str, timeout: float = CLIENT_TIMEOUT) -> str:
        return run_tool([*self.base_args(), *args], timeout=timeout, env=self.env())


class Skopeo(_Client):
    binary = "skopeo"

    def base_args(self) -> list[str]:
        return [self.path, "--policy", str(self.policy)]

    def copy(self, source: str, destination: str, *extra: str) -> str:
        return self(
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            *extra,
            source,
            destination,
        )

    def inspect(self, reference: str, *extra: str) -> Any:
        return json.loads(self("inspect", "--tls-verify=false", *extra, reference))

    def inspect_raw(self, reference: str, *extra: str) -> bytes:
        # Not through json: --raw promises the registry's exact bytes.
        return self("inspect", "--tls-verify=false", "--raw", *extra, reference).encode()


class Podman(_Client):
    binary = "podman"

    def __init__(self, scratch: Path, runroot: Path, insecure_hosts: Iterable[str] = ()) -> None:
        """`runroot` must be a short path: podman refuses one longer than 50 characters."""
        super().__init__(scratch, insecure_hosts)
        self.root = scratch / "root"
        self.runroot = runroot

    def base_args(self) -> list[str]:
        return [
            self.path,
            "--storage-driver",
            "vfs",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--events-backend",
            "file",
            "--cgroup-manager",
            "cgroupfs",
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        # Podman keeps per-user state (containers.conf, the events log) under these.
        env["XDG_CONFIG_HOME"] = str(self.scratch / "config")
        env["XDG_RUNTIME_DIR"] = str(self.scratch / "xdg-run")
        env["XDG_DATA_HOME"] = str(self.scratch / "xdg-data")
        return env

    def reset(self) -> None:
        """Forget every local image (podman's storage is ours alone)."""
        self("rmi", "--all", "--force")
