"""The deployment files shipped in the tree stay valid: the example replica configuration
loads, and the systemd unit passes systemd's own check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from regd import config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "regd.service"


def test_example_replica_configuration_loads() -> None:
    loaded = config.load(file=ROOT / "docs" / "examples" / "replica.toml", env={})
    # What makes it a replica's: shared database and bucket, shared signing keys.
    assert loaded.database_url.startswith("postgresql://")
    assert loaded.storage == "s3"
    assert loaded.s3_bucket
    assert loaded.auth_key_dir is not None


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert "\nType=notify\n" in text
    # The unit names the installed binary; here the one of this environment stands in.
    unit = tmp_path / "regd.service"
    unit.write_text(text.replace("/usr/local/bin/regd", str(Path(sys.executable).parent / "regd")))
    checked = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    # Unknown or misspelled settings are only warnings, naming the unit file.
    assert [line for line in checked.stderr.splitlines() if "regd.service" in line] == []
