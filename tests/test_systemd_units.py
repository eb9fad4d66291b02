"""The shipped systemd units pass ``systemd-analyze verify``: no unknown or misspelt keys."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.procs import REPO

UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package 'systemd'; .ci/run installs it)")
    text = unit.read_text()
    assert "ExecStart=/opt/sers/bin/sers-" in text
    # verify also checks that ExecStart exists: point it at stand-ins for the installed scripts.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sers-hub", "sers-agent"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/opt/sers/bin/", f"{bin_dir}/"))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
