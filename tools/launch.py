"""``make run``: a hub and an agent for this machine, started and stopped as one.

    python -m tools.launch [--host 127.0.0.1] [--port 8000] [--state-db sers-hub.sqlite3]

The hub starts first; its companions (here the agent, in ``make demo`` the simulated lab) start
once its ``/healthz`` answers. Whenever one of them exits, for whatever reason (the hub could
not listen, crashed, was killed), the others are stopped and the launcher exits with that
process's status, so nothing is left running. Ctrl-C, SIGTERM or SIGHUP stop them all and exit
0. On Linux each child also gets SIGTERM if the launcher itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0  # the hub closes its WebSockets within 3 s and writes its state file
POLL_EVERY_S = 0.1
PR_SET_PDEATHSIG = 1


def client_host(host: str) -> str:
    """The address to reach a hub listening on ``host`` from this machine, as a URL host."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]

    def exited(self) -> int | None:
        """The exit status once it has exited; killed by signal N, 128 + N as a shell reports it."""
        status = self.popen.poll()
        return 128 - status if status is not None and status < 0 else status


@dataclass
class Supervisor:
    """Children that live and die together; :meth:`stop_requested` turns true on a signal."""

    env: Mapping[str, str] | None = None
    children: list[Child] = field(default_factory=list)
    signalled: int | None = None

    def __post_init__(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signalled = signum

    def start(self, name: str, command: Sequence[str]) -> Child:
        child = Child(
            name,
            subprocess.Popen(
                command,
                env=self.env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            ),
        )
        self.children.append(child)
        return child

    def first_exited(self) -> tuple[Child, int] | None:
        for child in self.children:
            status = child.exited()
            if status is not None:
                return child, status
        return None

    def stop_all(self) -> None:
        """SIGTERM to every child still running, then SIGKILL to any left after the timeout."""
        for child in self.children:
            if child.exited() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in self.children:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"launch: {child.name} did not stop in {STOP_TIMEOUT_S:g} s: killed", file=sys.stderr)
                child.popen.kill()
                child.popen.wait()


# straight to the hub: an http_proxy from the environment must not carry a request to loopback
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def supervise(
    hub_command: Sequence[str],
    companions: Mapping[str, Sequence[str]],
    ready_url: str,
    banner: str,
    env: Mapping[str, str] | None = None,
) -> int:
    """Runs the hub, then (once ``ready_url`` answers) each companion, until one exits or a
    signal comes; stops the rest. Returns the exit status for the launcher."""
    group = Supervisor(env=env)
    try:
        hub = group.start("sers-hub", hub_command)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while group.signalled is None and not _answers(ready_url):
            status = hub.exited()
            if status is not None:
                print(
                    f"launch: sers-hub exited with status {status}; nothing else was started", file=sys.stderr
                )
                return status
            if time.monotonic() > deadline:
                print(
                    f"launch: sers-hub did not answer {ready_url} in {READY_TIMEOUT_S:g} s", file=sys.stderr
                )
                return 1
            time.sleep(POLL_EVERY_S)
        if group.signalled is not None:
            return 0
        for name, command in companions.items():
            group.start(name, command)
        print(banner, flush=True)
        while group.signalled is None:
            ended = group.first_exited()
            if ended is not None:
                child, status = ended
                others = ", ".join(c.name for c in group.children if c is not child) or "nothing else"
                print(f"launch: {child.name} exited with status {status}; stopping {others}", file=sys.stderr)
                return status
            time.sleep(POLL_EVERY_S)
        return 0
    finally:
        group.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address the hub listens on")
    parser.add_argument("--port", type=int, default=8000, help="port the hub listens on")
    parser.add_argument("--state-db", default="sers-hub.sqlite3", help="the hub's state file")
    args = parser.parse_args(argv)
    base = f"http://{client_host(args.host)}:{args.port}"
    python = sys.executable
    hub = [python, "-m", "hub", "--host", args.host, "--port", str(args.port), "--state-db", args.state_db]
    agent = [python, "-m", "node_agent", "--hub", base]
    banner = f"sers-monitor: dashboard on {base}  (Ctrl-C stops hub and agent)"
    return supervise(hub, {"sers-agent": agent}, f"{base}/healthz", banner)


if __name__ == "__main__":
    sys.exit(main())
