"""regctl and the registry client stay apart from the daemon's internals.

regd's pull-through cache and regctl share one registry client (regd.client); it must
import without the daemon's configuration, metadata, storage or API, and regctl must need
nothing of regd beyond that client and the shared OCI definitions.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SHARED = ("regd.oci", "regd.durations", "regd.clock")


def _loaded_regd_modules(module: str) -> set[str]:
    code = (
        f"import sys, {module}\n"
        "print('\\n'.join(m for m in sys.modules if m == 'regd' or m.startswith('regd.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.split())


def _outside(modules: set[str], allowed: tuple[str, ...]) -> set[str]:
    return {
        m
        for m in modules
        if m != "regd" and not any(m == a or m.startswith(a + ".") for a in allowed)
    }


def test_the_client_needs_only_the_oci_definitions() -> None:
    loaded = _loaded_regd_modules("regd.client")
    assert "regd.client.transport" in loaded
    assert _outside(loaded, ("regd.client", "regd.oci", "regd.clock")) == set()


@pytest.mark.parametrize("module", ["regctl.main", "regctl.commands.storage"])
def test_regctl_needs_only_the_client_and_shared_parts(module: str) -> None:
    loaded = _loaded_regd_modules(module)
    assert "regd.client" in loaded
    assert _outside(loaded, ("regd.client", *SHARED)) == set()
