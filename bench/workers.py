"""Plumbing shared by the load-generating worker processes and the process that drives them.

Workers are ``python -m bench.<worker> ...`` child processes. The driver talks to them with JSON
lines: commands on their stdin, events on their stdout (anything else a worker prints goes to
stderr, which the driver sends to a log file).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- worker side
def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def commands() -> asyncio.StreamReader:
    """The worker's stdin as an asyncio stream of JSON lines."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def next_command(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        return {"cmd": "stop"}
    command: dict[str, Any] = json.loads(line)
    return command


def quantiles_ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "count": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(p * len(ordered)))])

    return {"p50": q(0.50), "p99": q(0.99), "max": float(ordered[-1]), "count": len(ordered)}


# --------------------------------------------------------------------------- driver side
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_until(predicate: Callable[[], Any], timeout_s: float, every_s: float = 0.1) -> bool:
    """Whether ``predicate`` came true within ``timeout_s`` (an ``OSError`` counts as not yet),
    for benchmarks that wait outside an event loop."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(every_s)
    return False


async def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(every_s)


class Worker:
    """A child process speaking JSON lines (or any process, when ``jsonl`` is false)."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, log_path: Path, jsonl: bool) -> None:
        self.proc = proc
        self.jsonl = jsonl
        self.name = name
        self.log_path = log_path
        self.ps = psutil.Process(proc.pid)

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        jsonl: bool = True,
        cwd: Path | None = None,
    ) -> Worker:
        log_path = log_dir / f"{name}.log"
        with open(log_path, "ab") as log:  # noqa: ASYNC230 - opening a log file is instant
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if jsonl else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if jsonl else log,
                stderr=log,
                env=child_env(env),
                cwd=cwd or REPO,  # `python -m` looks in the working directory first
            )
        return cls(proc, name, log_path, jsonl)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def event(self, kind: str, timeout_s: float) -> dict[str, Any]:
        """The next event of ``kind`` (other events are skipped)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {kind!r} event within {timeout_s:.0f} s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            if not line:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                event: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == kind:
                return event

    def cpu_s(self) -> float:
        """CPU seconds of all its threads, to the nanosecond (Linux schedstat), else psutil's
        clock-tick (10 ms) figure."""
        try:
            return sum(
                int((task / "schedstat").read_text().split()[0]) / 1e9
                for task in Path(f"/proc/{self.proc.pid}/task").iterdir()
            )
        except (OSError, IndexError, ValueError):
            pass
        try:
            times = self.ps.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def runqueue_wait_s(self) -> float:
        """Seconds its threads spent runnable but waiting for a CPU (Linux schedstat): how much
        the machine, not the process, held it back."""
        total = 0.0
        try:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                fields = (task / "schedstat").read_text().split()
                total += int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0
        return total

    def rss_bytes(self) -> int:
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        if self.jsonl and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            try:
                await self.send(cmd="stop")
                await asyncio.wait_for(self.proc.wait(), timeout_s / 2)
                return
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s / 2)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
