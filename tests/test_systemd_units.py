"""The shipped systemd units: ``systemd-analyze verify`` finds no unknown or misspelt keys, and
the hub unit, run with exactly its environment and command, lets /etc/sers/hub.env decide."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.procs import REPO, Proc, answers, free_port, spawn, wait_until

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


# --------------------------------------------------------------------------- the hub unit, run
def unit_entries(text: str) -> dict[str, list[str]]:
    """``Key=value`` entries of a unit file, by key, continuation lines joined, comments skipped."""
    entries: dict[str, list[str]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def environment_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines as systemd's ``EnvironmentFile=`` reads them (comments, quotes)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def test_hub_unit_lets_hub_env_decide_and_serves_the_page_without_a_proxy(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """Runs the hub with exactly the unit's environment and command: ``Environment=`` defaults,
    then the sample ``/etc/sers/hub.env`` (which systemd lets override them), then
    ``StateDirectory=``'s ``STATE_DIRECTORY``; the values in hub.env must win, and the page and
    its assets must load straight from the hub."""
    entries = unit_entries((REPO / "deploy" / "systemd" / "sers-hub.service").read_text())
    assert entries["EnvironmentFile"] == ["-/etc/sers/hub.env"]
    env: dict[str, str] = {}
    for assignments in entries.get("Environment", []):
        for assignment in shlex.split(assignments):
            key, _, value = assignment.partition("=")
            env[key] = value
    assert env.get("SERS_PORT") == "8000" and "SERS_ROOT_PATH" not in env
    port = free_port()
    hub_env = tmp_path / "hub.env"
    hub_env.write_text(
        f'# the operator\'s settings\nSERS_PORT={port}\nSERS_TOKEN="from-hub-env"\nSERS_VIEW_TOKEN=\n'
    )
    env.update(environment_file(hub_env.read_text()))
    state_directory = tmp_path / "state" / entries["StateDirectory"][0]
    state_directory.mkdir(parents=True)
    env["STATE_DIRECTORY"] = str(state_directory)
    (command,) = entries["ExecStart"]
    argv = shlex.split(command)
    assert argv[0] == "/opt/sers/bin/sers-hub"
    hub_proc = spawn([sys.executable, "-m", "hub", *argv[1:]], tmp_path / "hub.log", env)
    procs.append(hub_proc)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(base + "/healthz"), 20, what=f"the hub on hub.env's port {port}")

    page = httpx.get(base + "/", timeout=5)
    assert page.status_code == 200, "no view token: SERS_VIEW_TOKEN= in hub.env is not given"
    base_href = re.search(r'<base href="([^"]*)"', page.text)
    assert base_href is not None and base_href.group(1) == "/"
    assets = re.findall(r'(?:href|src)="(static/[^"]+)"', page.text)
    assert len(assets) >= 2, page.text
    for asset in assets:
        url = urljoin(urljoin(base + "/", base_href.group(1)), asset)
        assert httpx.get(url, timeout=5).status_code == 200, url
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{port}/ws/agent", open_timeout=5).__enter__()
    assert refused.value.response.status_code == 401, "hub.env's SERS_TOKEN applies"
    assert (state_directory / "hub.sqlite3").is_file()
