"""Real processes for integration tests: a hub on a free port, agents, and waiting helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_exec(child: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """Until ``child`` has exec'd: ``Popen`` may return while it is still a copy of this python,
    whose command line (empty in /proc then), user and cgroup a test would read instead."""
    deadline = time.monotonic() + timeout_s
    while not Path(f"/proc/{child.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.005)


def sleeping_child(seconds: float = 120) -> subprocess.Popen[bytes]:
    """A real process for a fake GPU to list, returned once it has exec'd."""
    child = subprocess.Popen(["sleep", f"{seconds:g}"])
    wait_for_exec(child)
    return child


def wait_until(
    predicate: Callable[[], T], timeout_s: float = 10.0, every_s: float = 0.05, what: str = ""
) -> T:
    """Polls until ``predicate`` returns something truthy; returns it or fails with ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(every_s)


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERS_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Proc:
    """A child process whose output goes to a log file (read it when a test fails)."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                return self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(10)


def spawn(args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> Proc:
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    popen = subprocess.Popen(
        list(args), stdout=log_file, stderr=subprocess.STDOUT, env=base_env(env), cwd=REPO
    )
    log_file.close()
    return Proc(popen, log_path)


@dataclass
class Hub:
    port: int
    tmp: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> Hub:
        args = [sys.executable, "-m", "hub", "--port", str(self.port), *self.args]
        env = {"SERS_STATE_DB": str(self.tmp / "hub.sqlite3"), **self.env}
        self.proc = spawn(args, self.tmp / f"hub-{self.port}.log", env)
        wait_until(self._healthy, timeout_s, what=f"hub on port {self.port} to answer /healthz")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"hub exited early:\n{self.proc.log()}")
        try:
            self.get("/healthz")
        except OSError:
            return False
        return True

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["id"]: n for n in self.get("/api/v1/nodes")["nodes"]}

    def status(self, node: str) -> str | None:
        found = self.nodes().get(node)
        return None if found is None else found["status"]

    def wait_status(self, node: str, status: str, timeout_s: float = 15.0) -> float:
        """Waits for ``node`` to reach ``status``; returns the seconds it took."""
        started = time.monotonic()
        wait_until(lambda: self.status(node) == status, timeout_s, what=f"{node} to be {status}")
        return time.monotonic() - started


def start_hub(
    started: list[Proc], tmp: Path, *args: str, toml: str | None = None, port: int | None = None
) -> Hub:
    """A real hub on ``port`` (a free one by default), its process put in ``started`` to be
    stopped with the others; with ``toml``, that text is its ``--config`` file (tmp/hub.toml).
    A restart on the same port and config: ``start_hub(started, hub.tmp, *hub.args, port=hub.port)``."""
    if toml is not None:
        config = tmp / "hub.toml"
        config.write_text(toml)
        args = ("--config", str(config), *args)
    hub = Hub(port=port or free_port(), tmp=tmp, args=args).start()
    assert hub.proc is not None
    started.append(hub.proc)
    return hub


def stop_cleanly(hub: Hub) -> None:
    """SIGTERM, and the hub's shutdown ran to its end (its last flush and state file written)."""
    assert hub.proc is not None
    hub.proc.stop()
    assert "Application shutdown complete" in hub.proc.log()


@contextmanager
def killed_at_exit() -> Iterator[list[Proc]]:
    """A list for child processes, each killed when the block ends if still running (the
    ``procs`` fixture; module-scoped fixtures, which cannot use it, use this directly)."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.popen.poll() is None:
                proc.kill()


def start_agent(
    hub: Hub,
    name: str,
    *args: str,
    interval_s: float = 0.5,
    env: Mapping[str, str] | None = None,
    hub_url: str | None = None,
) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "node_agent",
        "--hub",
        hub_url or hub.url,
        "--name",
        name,
        "--interval",
        str(interval_s),
        *args,
    ]
    return spawn(argv, hub.tmp / f"agent-{name}.log", env)


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now (for waiting on a server or a proxy to come up)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
