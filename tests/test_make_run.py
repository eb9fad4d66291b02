"""``make run`` (``tools/launch.py``) with real processes: the hub and the agent start and stop
together, and nothing is left running however it ends (port in use, Ctrl-C, SIGTERM to make,
the hub dying, the launcher dying)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import REPO, base_env, free_port, wait_until
from tests.sessions import kill_session, session_members, start_session

VENV = Path(sys.executable).parent.parent
# make runs $(VENV)/bin/python: the tests' own interpreter, when it lives in a venv
pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not (VENV / "bin" / "python").exists(), reason="needs make and a venv"
)


def make_run(port: int) -> list[str]:
    """``make run`` on ``port`` with this interpreter's venv, which ``-o`` keeps make from
    (re)installing. make runs in the test's folder, so the hub's state file lands there."""
    return [
        "make",
        "-f",
        str(REPO / "Makefile"),
        "-o",
        str(VENV / "bin" / "sers-hub"),
        "run",
        f"VENV={VENV}",
        f"PORT={port}",
    ]


def listed_nodes(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nodes", timeout=2) as response:
            return len(json.loads(response.read())["nodes"])
    except OSError:
        return 0


class Session:
    def __init__(self, argv: list[str], tmp: Path) -> None:
        self.log_path = tmp / "session.log"
        self.popen = start_session(argv, tmp, base_env(), self.log_path)

    @property
    def id(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float = 20.0) -> int:
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout_s} s:\n{self.log()}") from None

    def children(self) -> dict[int, str]:
        return {pid: cmd for pid, cmd in session_members(self.id).items() if pid != self.id}

    def assert_nothing_left(self) -> None:
        # children stopped by a signal may still be on their way out for a moment
        wait_until(lambda: not session_members(self.id), 10, what="every process of the session to exit")


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    started: list[Session] = []
    yield started
    for session in started:
        kill_session(session.id)
        if session.popen.poll() is None:
            session.popen.kill()
            session.popen.wait()


def started_and_agent_connected(sessions: list[Session], argv: list[str], tmp: Path, port: int) -> Session:
    session = Session(argv, tmp)
    sessions.append(session)
    wait_until(lambda: listed_nodes(port) == 1, 30, what=f"the agent to show up on the hub:\n{session.log()}")
    commands = list(session.children().values())
    assert any("-m hub" in c for c in commands), commands
    assert any("-m node_agent" in c for c in commands), commands
    return session


def test_make_run_on_a_port_in_use_exits_non_zero_and_starts_no_agent(
    tmp_path: Path, sessions: list[Session]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        session = Session(make_run(port), tmp_path)
        sessions.append(session)
        status = session.wait()
        log = session.log()
        assert status != 0, log
        # the old recipe started the agent a second after the hub, whatever became of the hub
        assert session_members(session.id) == {}, log
        assert "nothing else was started" in log


def test_ctrl_c_stops_hub_and_agent_quietly(tmp_path: Path, sessions: list[Session]) -> None:
    port = free_port()
    session = started_and_agent_connected(sessions, make_run(port), tmp_path, port)
    assert (tmp_path / "sers-hub.sqlite3").exists()  # make run keeps its state where it runs
    os.killpg(session.id, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the job
    status = session.wait()
    log = session.log()
    assert status == -signal.SIGINT, log  # make ends itself with the signal, as a shell expects
    assert "Traceback" not in log
    assert "make: ***" not in log  # the launcher exited 0: make reports no error
    session.assert_nothing_left()


def test_sigterm_to_make_stops_hub_and_agent(tmp_path: Path, sessions: list[Session]) -> None:
    port = free_port()
    session = started_and_agent_connected(sessions, make_run(port), tmp_path, port)
    session.popen.terminate()  # make alone: it passes SIGTERM on to the launcher
    session.wait()
    assert "Traceback" not in session.log()
    session.assert_nothing_left()


def launcher(port: int, tmp: Path) -> list[str]:
    state = str(tmp / "hub.sqlite3")
    return [sys.executable, "-m", "tools.launch", "--port", str(port), "--state-db", state]


def test_the_agent_stops_when_the_hub_dies(tmp_path: Path, sessions: list[Session]) -> None:
    port = free_port()
    session = started_and_agent_connected(sessions, launcher(port, tmp_path), tmp_path, port)
    (hub_pid,) = [pid for pid, cmd in session.children().items() if "-m hub" in cmd]
    os.kill(hub_pid, signal.SIGKILL)
    status = session.wait()
    assert status == 128 + signal.SIGKILL, session.log()
    assert "sers-hub exited with status 137; stopping sers-agent" in session.log()
    session.assert_nothing_left()


def test_hub_and_agent_stop_when_the_launcher_is_killed(tmp_path: Path, sessions: list[Session]) -> None:
    port = free_port()
    session = started_and_agent_connected(sessions, launcher(port, tmp_path), tmp_path, port)
    session.popen.kill()  # no chance to clean up: the children's parent-death signal does it
    session.popen.wait()
    session.assert_nothing_left()


def test_make_help_lists_every_target_and_the_options() -> None:
    makefile = (REPO / "Makefile").read_text()
    (phony,) = [line for line in makefile.splitlines() if line.startswith(".PHONY:")]
    targets = phony.split(":", 1)[1].split()
    done = subprocess.run(
        ["make", "-s", "-f", str(REPO / "Makefile"), "help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    listed = done.stdout
    for target in targets:
        assert f"make {target}" in listed, target
    assert "PORT=" in listed and "HOST=" in listed
    assert "http://127.0.0.1:8000" in listed


# What make run, the tests and the builds leave in a checkout.
LEFTOVERS = (
    ".venv/bin/python",
    ".mypy_cache/x",
    ".ruff_cache/x",
    ".pytest_cache/x",
    ".hypothesis/examples/x",
    "build/lib/x",
    "dist/sers_monitor-0.1.0.tar.gz",
    "sers_monitor.egg-info/PKG-INFO",
    "sers-hub.sqlite3",
    "sers-hub.sqlite3-wal",
    "sers-hub.sqlite3-shm",
    "hub/__pycache__/app.cpython-311.pyc",
    "tests/fake_nvml/__pycache__/x.pyc",
)


def test_make_clean_removes_every_leftover_and_git_ignores_them(tmp_path: Path) -> None:
    for leftover in LEFTOVERS:
        (tmp_path / leftover).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / leftover).write_text("x")
    (tmp_path / "hub" / "app.py").write_text("kept")
    done = subprocess.run(
        ["make", "-s", "-f", str(REPO / "Makefile"), "clean"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["hub/app.py"]
    if shutil.which("git") and (REPO / ".git").exists():
        ignored = subprocess.run(
            ["git", "-C", str(REPO), "check-ignore", "--no-index", *LEFTOVERS],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert sorted(ignored.stdout.split()) == sorted(LEFTOVERS)
