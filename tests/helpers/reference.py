"""Whether a test may go on without the reference registry (Distribution).

The comparisons with Distribution are what prove regd's answers right, so CI (which sets
`CI=true`) must never report them as passed by skipping them: there a missing binary fails the
test. A developer's machine without the Debian package may skip them, with the reason.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.servers import distribution_binary

MISSING = "the Debian docker-registry package (Distribution) is not installed; run scripts/setup"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_distribution() -> None:
    """Fail under CI, skip elsewhere, when the reference registry is not installed."""
    if distribution_binary() is not None:
        return
    if in_ci():
        pytest.fail(f"{MISSING} (CI must run the comparisons)", pytrace=False)
    pytest.skip(MISSING)
