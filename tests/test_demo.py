"""``make demo`` (``bench/demo.py``) with real processes: a hub and a simulated lab of 36 GPU
servers on the port asked for, a realistic mix on the API, and nothing left once stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.lab import GOES_OFFLINE, LAB_SIZE, SAMPLER_STUCK
from tests.procs import REPO, base_env, free_port, wait_until
from tests.sessions import kill_session, session_members, start_session

VENV = Path(sys.executable).parent.parent


def nodes(port: int) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nodes", timeout=2) as response:
            found: list[dict[str, Any]] = json.loads(response.read())["nodes"]
            return found
    except OSError:
        return []


def troubled_lab(port: int) -> dict[str, dict[str, Any]] | None:
    """The nodes by name, once the one that leaves has left and the hung one is late."""
    found = {n["id"]: n for n in nodes(port)}
    if (
        len(found) == LAB_SIZE
        and found[GOES_OFFLINE]["status"] == "offline"
        and found[SAMPLER_STUCK]["sample_late"]
    ):
        return found
    return None


@pytest.fixture
def sessions() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for popen in started:
        kill_session(popen.pid)
        if popen.poll() is None:
            popen.kill()
        popen.wait()


def test_the_demo_shows_a_realistic_lab_and_ctrl_c_stops_it(
    tmp_path: Path, sessions: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    demo = start_session([sys.executable, "-m", "bench.demo", "--port", str(port)], REPO, base_env(), log)
    sessions.append(demo)
    listed = wait_until(lambda: len(nodes(port)) == LAB_SIZE, 10, what=f"{LAB_SIZE} nodes on the API")
    assert listed
    assert LAB_SIZE >= 30  # "a few dozen"
    # within seconds: the history sent, one node gone, one whose sampler hangs
    lab = wait_until(lambda: troubled_lab(port), 30, what="one node offline and one sample late")
    assert [n["id"] for n in lab.values() if n["status"] != "live"] == [GOES_OFFLINE]
    assert {n["group"] for n in lab.values()} == {"nlp", "shared", "students", "vision", "workshop"}
    gpus = [gpu for n in lab.values() for gpu in n["state"]["gpus"].values()]
    assert len({gpu["name"] for gpu in gpus}) == 5
    users = {p["user"] for gpu in gpus for p in gpu.get("processes") or []}
    assert len(users) >= 5
    busy = sum(bool(gpu.get("processes")) for gpu in gpus)
    free = sum(gpu.get("processes") == [] for gpu in gpus)
    assert busy > 50 and free > 50, (busy, free)
    assert sum(bool(gpu.get("error")) for gpu in gpus) == 1  # the lost GPU

    os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole job gets it
    assert demo.wait(20) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    assert session_members(demo.pid) == {}


@pytest.mark.skipif(
    shutil.which("make") is None or not (VENV / "bin" / "python").exists(), reason="needs make and a venv"
)
def test_make_demo_on_the_port_given_and_sigterm_stops_it(
    tmp_path: Path, sessions: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    log = tmp_path / "make.log"
    argv = ["make", "-f", str(REPO / "Makefile"), "-o", str(VENV / "bin" / "sers-hub")]
    argv += ["demo", f"VENV={VENV}", f"PORT={port}"]
    demo = start_session(argv, tmp_path, base_env(), log)
    sessions.append(demo)
    wait_until(lambda: len(nodes(port)) == LAB_SIZE, 10, what=f"{LAB_SIZE} nodes on port {port}")
    demo.terminate()  # make alone: it passes SIGTERM on
    demo.wait(20)
    assert "Traceback" not in log.read_text()
    wait_until(lambda: not session_members(demo.pid), 10, what="every process of the demo to exit")
