"""The agent stops within 2 s of SIGTERM, with exit code 0, whatever it is doing: connected, stuck
in the WebSocket handshake, waiting for a close the hub never sends, sleeping between retries,
connecting to a hub whose packets are dropped, or with its sampling thread stuck in NVML.

Real agent processes against real sockets: the real hub, or small hand-made servers that
misbehave in one way each. The 2 s is the issue's limit for a service manager's stop (a wall of
agents restarted together), not a benchmark.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from node_agent import __main__ as agent_main
from node_agent.__main__ import cancel_within
from tests.fakes import fake_env, gpu, scenario
from tests.procs import Hub, Proc, spawn, wait_until

EXIT_LIMIT_S = 2.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OPCODE_CLOSE = 0x8


def start_agent_at(url: str, tmp_path: Path, name: str, env: dict[str, str] | None = None) -> Proc:
    argv = [sys.executable, "-m", "node_agent", "--hub", url, "--name", name, "--interval", "0.5"]
    return spawn(argv, tmp_path / f"agent-{name}.log", env)


def assert_stops_quickly(agent: Proc) -> float:
    """Sends SIGTERM and returns the seconds until the process had exited, with code 0."""
    assert agent.popen.poll() is None, f"the agent exited early:\n{agent.log()}"
    started = time.monotonic()
    os.kill(agent.pid, signal.SIGTERM)
    try:
        code = agent.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the agent did not exit within 10 s of SIGTERM:\n{agent.log()}") from None
    took_s = time.monotonic() - started
    assert code == 0, f"exit code {code}:\n{agent.log()}"
    print(f"exited {took_s:.2f} s after SIGTERM")
    assert took_s < EXIT_LIMIT_S, f"the agent took {took_s:.2f} s to exit after SIGTERM:\n{agent.log()}"
    return took_s


class RawHub:
    """A TCP server that reads what agents send and never writes, except (with ``handshake``)
    the answer to the WebSocket handshake: then it reads frames and answers none, not even a
    close. Records the requests and the frames' opcodes and payloads."""

    def __init__(self, *, handshake: bool) -> None:
        self._handshake = handshake
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.requests = 0
        self.frames: list[tuple[int, bytes]] = []
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/agent"

    def close(self) -> None:
        self._listener.close()
        for connection in self._connections:
            connection.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._listener.accept()
                self._connections.append(connection)
                threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        with contextlib.suppress(OSError, ValueError):
            lines = []
            while (line := reader.readline()) not in (b"\r\n", b""):
                lines.append(line)
            self.requests += 1
            if not self._handshake:
                reader.read()  # until the agent hangs up
                return
            key = next(
                ln.split(b":", 1)[1].strip() for ln in lines if ln.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            connection.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            while frame := _read_frame(reader):
                self.frames.append(frame)


def _read_frame(reader: Any) -> tuple[int, bytes] | None:
    """One client frame (always masked, RFC 6455 5.2): (opcode, unmasked payload)."""
    head = reader.read(2)
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", reader.read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", reader.read(8))
    mask = reader.read(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(reader.read(length)))
    return head[0] & 0x0F, payload


@pytest.fixture
def silent_hub() -> Iterator[RawHub]:
    server = RawHub(handshake=False)
    yield server
    server.close()


@pytest.fixture
def no_close_hub() -> Iterator[RawHub]:
    server = RawHub(handshake=True)
    yield server
    server.close()


# --------------------------------------------------------------------------- the states
def test_connected_agent_stops_quickly_and_says_goodbye(hub: Hub, procs: list[Proc], tmp_path: Path) -> None:
    agent = start_agent_at(hub.ws_url + "/ws/agent", tmp_path, "connected")
    procs.append(agent)
    hub.wait_status("connected", "live")
    assert_stops_quickly(agent)
    hub.wait_status("connected", "offline", timeout_s=3)


def test_agent_stuck_in_the_handshake_stops_quickly(
    silent_hub: RawHub, procs: list[Proc], tmp_path: Path
) -> None:
    """The hub accepts the TCP connection and never answers the upgrade request."""
    agent = start_agent_at(silent_hub.url, tmp_path, "handshake")
    procs.append(agent)
    wait_until(lambda: silent_hub.requests, 10, what="the agent's upgrade request")
    assert_stops_quickly(agent)


def test_agent_whose_close_is_never_answered_stops_quickly(
    no_close_hub: RawHub, procs: list[Proc], tmp_path: Path
) -> None:
    """The agent sends its close frame; the hub never answers it nor drops the connection."""
    agent = start_agent_at(no_close_hub.url, tmp_path, "no-close")
    procs.append(agent)
    wait_until(lambda: len(no_close_hub.frames) >= 2, 10, what="the agent's hello and first delta")
    assert_stops_quickly(agent)
    closes = [payload for opcode, payload in no_close_hub.frames if opcode == OPCODE_CLOSE]
    assert closes, "the agent tried to close cleanly first"
    assert struct.unpack("!H", closes[0][:2])[0] == 1001, "going away, not an error"


def test_agent_sleeping_before_a_retry_stops_quickly(procs: list[Proc], tmp_path: Path) -> None:
    with socket.socket() as refusing:  # bound, never listening: every connect is refused
        refusing.bind(("127.0.0.1", 0))
        agent = start_agent_at(f"ws://127.0.0.1:{refusing.getsockname()[1]}", tmp_path, "backoff")
        procs.append(agent)
        wait_until(lambda: "reconnecting in" in agent.log(), 10, what="the agent to back off")
        assert_stops_quickly(agent)


def test_agent_connecting_to_an_unreachable_hub_stops_quickly(procs: list[Proc], tmp_path: Path) -> None:
    """The hub's packets are dropped: the agent's connect waits in SYN_SENT (a full listen
    queue drops SYNs, as a firewall or a cut link would)."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full, socket.socket() as filler:
        port = full.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # takes the one place in the queue; never accepted
        agent = start_agent_at(f"ws://127.0.0.1:{port}", tmp_path, "unreachable")
        procs.append(agent)

        def connecting() -> bool:
            return any(
                c.status == psutil.CONN_SYN_SENT for c in psutil.Process(agent.pid).net_connections("tcp")
            )

        wait_until(connecting, 10, what="the agent's connection attempt to hang in SYN_SENT")
        assert_stops_quickly(agent)


def test_agent_with_a_hung_nvml_call_stops_quickly(hub: Hub, procs: list[Proc], tmp_path: Path) -> None:
    """The sampling thread is stuck in the driver, holding the GPU collector's lock."""
    path = tmp_path / "nvml.json"
    path.write_text(json.dumps(scenario([gpu(0), gpu(1)], live_reload=True)))
    agent = start_agent_at(hub.ws_url + "/ws/agent", tmp_path, "hung-nvml", env=fake_env(path))
    procs.append(agent)
    hub.wait_status("hung-nvml", "live")
    wait_until(lambda: hub.nodes()["hung-nvml"].get("state", {}).get("gpus"), 10, what="a GPU sample")
    hung = scenario([gpu(0, hang=["nvmlDeviceGetUtilizationRates"]), gpu(1)], live_reload=True)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(hung))
    os.replace(temp, path)  # atomically: the fake reads the file while the agent runs
    wait_until(lambda: hub.nodes()["hung-nvml"]["sample_late"], 15, what="the sample to be late")
    assert_stops_quickly(agent)


# --------------------------------------------------------------------------- in-process
def test_a_task_stuck_in_its_cleanup_is_cancelled_again() -> None:
    """A link whose close waits on a hub that stopped reading (a send that never drains)."""
    cleaned: list[str] = []

    async def stuck_in_cleanup() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(3600)  # the second cancellation ends this
            cleaned.append("never")

    async def scenario() -> tuple[list[BaseException | None], float]:
        task = asyncio.create_task(stuck_in_cleanup())
        await asyncio.sleep(0)
        started = time.monotonic()
        outcomes = await cancel_within([task], 0.2)
        return outcomes, time.monotonic() - started

    outcomes, took_s = asyncio.run(scenario())
    assert isinstance(outcomes[0], asyncio.CancelledError) and cleaned == []
    assert 0.2 <= took_s < 1.0


def test_json_without_once_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never_run(main: Coroutine[Any, Any, None]) -> None:
        main.close()
        raise AssertionError("the agent went on to stream, --json ignored")

    monkeypatch.setattr(agent_main, "run_event_loop", never_run)
    assert agent_main.main(["--json"]) == 2
    err = capsys.readouterr().err
    assert err == "sers-agent: error: --json prints one snapshot: use it with --once\n"
