"""``sers-hub`` as a person runs it: Ctrl-C, a busy port, the default state file, and the
request-head deadline (slowloris) against real sockets."""

from __future__ import annotations

import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import REPO, Hub, Proc, base_env, free_port, spawn, wait_until
from tests.wsclients import delta, hello, open_agent, open_viewer, recv_text, snapshot


def start(tmp: Path, procs: list[Proc], *args: str, **env: str) -> Hub:
    tmp.mkdir(parents=True, exist_ok=True)
    hub = Hub(port=free_port(), tmp=tmp, args=args, env=dict(env)).start()
    assert hub.proc is not None
    procs.append(hub.proc)
    return hub


def test_ctrl_c_exits_quietly_with_130(tmp_path: Path, procs: list[Proc]) -> None:
    hub = start(tmp_path, procs)
    assert hub.proc is not None
    hub.proc.signal(signal.SIGINT)
    assert hub.proc.popen.wait(15) == 130
    log = hub.proc.log()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert "Application shutdown complete" in log


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_busy_port_says_how_to_pick_another(how: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--port", str(port)] if how == "flag" else []
        env = {"SERS_STATE_DB": str(tmp_path / "hub.sqlite3")}
        if how == "env":
            env["SERS_PORT"] = str(port)
        result = subprocess.run(
            [sys.executable, "-m", "hub", *args],
            capture_output=True,
            text=True,
            env=base_env(env),
            cwd=REPO,
            timeout=30,
        )
    assert result.returncode == 1
    error = result.stderr.strip()
    assert error.startswith(f"sers-hub: error: cannot listen on 127.0.0.1:{port}: Address already in use")
    for remedy in ("--port N", "SERS_PORT=N", "PORT=N make run"):
        assert remedy in error, error
    assert "Traceback" not in result.stderr


def test_the_default_state_file_is_under_xdg_state_home(tmp_path: Path, procs: list[Proc]) -> None:
    state_home = tmp_path / "state"
    hub = start(tmp_path, procs, SERS_STATE_DB="", XDG_STATE_HOME=str(state_home))  # empty: not given
    state_dir = state_home / "sers-monitor"
    assert (state_dir / "hub.sqlite3").is_file()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert hub.proc is not None


def test_forget_finds_the_default_state_file(tmp_path: Path, procs: list[Proc]) -> None:
    state_home = tmp_path / "state"
    hub = start(tmp_path, procs, SERS_STATE_DB="", XDG_STATE_HOME=str(state_home))
    ws = open_agent(hub)
    ws.send(hello("remembered"))
    ws.send(delta(1, snapshot()))
    hub.wait_status("remembered", "live")
    ws.close()
    assert hub.proc is not None and hub.proc.stop() is not None
    env = base_env({"XDG_STATE_HOME": str(state_home)})
    forget = [sys.executable, "-m", "hub", "forget", "remembered"]
    result = subprocess.run(forget, capture_output=True, text=True, env=env, cwd=REPO, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "forgot remembered (restart the hub if it is running)",
    )


def test_state_db_none_keeps_no_file(tmp_path: Path, procs: list[Proc]) -> None:
    state_home = tmp_path / "state"
    start(tmp_path, procs, SERS_STATE_DB="none", XDG_STATE_HOME=str(state_home))
    assert not state_home.exists()


# --------------------------------------------------------------------------- slowloris
HEADER_TIMEOUT_S = 1.0


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Sends ``trickle`` every 0.25 s (if any) until the hub closes ``sock``; returns the seconds
    that took, or ``None`` if it stayed open for ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if trickle:
            try:
                sock.sendall(trickle)
            except OSError:
                return time.monotonic() - started
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return time.monotonic() - started
    return None


def read_response(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_connections_that_never_finish_a_request_head_are_closed(tmp_path: Path, procs: list[Proc]) -> None:
    hub = start(tmp_path, procs, "--header-timeout-s", str(HEADER_TIMEOUT_S))
    address = ("127.0.0.1", hub.port)
    limit_s = HEADER_TIMEOUT_S + 2.0

    with socket.create_connection(address) as silent:
        took = closed_within(silent, limit_s)
        assert took is not None and took >= HEADER_TIMEOUT_S * 0.8, took

    with socket.create_connection(address) as trickling:
        trickling.sendall(b"GET / HTTP/1.1\r\n")
        took = closed_within(trickling, limit_s, trickle=b"X-Slow: 1\r\n")
        assert took is not None, "a client that trickles header lines is closed all the same"

    with socket.create_connection(address) as kept_alive:  # the next request on the connection
        kept_alive.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n\r\n".encode())
        assert read_response(kept_alive).startswith(b"HTTP/1.1 200")
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert closed_within(kept_alive, limit_s, trickle=b"X-Slow: 1\r\n") is not None

    with socket.create_connection(address) as slow_but_in_time:
        for part in (b"GET /healthz HTTP/1.1\r\n", f"Host: 127.0.0.1:{hub.port}\r\n".encode(), b"\r\n"):
            slow_but_in_time.sendall(part)
            time.sleep(HEADER_TIMEOUT_S / 4)
        assert read_response(slow_but_in_time).startswith(b"HTTP/1.1 200")

    viewer = open_viewer(hub)  # a WebSocket's head is complete: it stays open as long as it likes
    try:
        assert 'id="nodes"' in recv_text(viewer)
        time.sleep(HEADER_TIMEOUT_S * 2)
        viewer.ping().wait(5)
    finally:
        viewer.close()
    wait_until(lambda: hub.get("/healthz"), 5, what="the hub to still answer")


def test_the_version_flag_needs_no_settings(tmp_path: Path) -> None:
    """``--version`` answers even with settings that would not start a hub."""
    proc = spawn(
        [sys.executable, "-m", "hub", "--version"], tmp_path / "version.log", {"SERS_PORT": "not-a-port"}
    )
    assert proc.popen.wait(30) == 0
    assert proc.log().startswith("sers-hub ")
