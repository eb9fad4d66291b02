"""A wall of browsers joining at once over a slow link: the hub's RSS while their full states wait.

A real ``sers-hub`` (no state file) carries ``--nodes`` simulated agents (:mod:`bench.load_agents`,
one process); then ``--viewers`` raw ``/ws/view`` connections open together, as after a hub
restart, each with a 64 KiB receive buffer and reading nothing after the handshake: what the
hub holds for each viewer is what it has not sent yet. Prints the hub's RSS before they join and
the highest in the ``--hold`` seconds after (until the hub drops them: ``send_timeout_s``).
``--hub-path DIR`` runs the hub of another tree (a worktree of an older commit) for a side by side.

    python -m bench.viewer_burst [--nodes 2000] [--viewers 50] [--hold 10] [--hub-path DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench.figures import Figures
from bench.workers import REPO, free_port, get_json, wait_until

MIB = 1024 * 1024
RECEIVE_BUFFER_BYTES = 64 * 1024


def open_slow_viewer(port: int) -> socket.socket:
    """A WebSocket handshake on ``/ws/view``, then nothing read: a browser on a slow link."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/view HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{port}\r\n\r\n"
        ).encode()
    )
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.viewer_burst", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the viewers read nothing")
    parser.add_argument("--hub-path", help="the tree whose hub runs (default: this one)")
    parser.add_argument("--tiny", action="store_true", help="a few nodes and viewers (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.nodes, args.viewers, args.hold = 20, 3, 2.0
    tree = Path(args.hub_path).resolve() if args.hub_path else REPO
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(tree), str(REPO)]))}
    fig = Figures("viewer_burst", judge=not args.tiny)
    fig.header(
        f"{args.nodes} nodes, {args.viewers} viewers joining at once and reading nothing for {args.hold:g} s"
    )
    fig.note(f"hub: {tree}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hub = subprocess.Popen(
        [sys.executable, "-m", "hub", "--port", str(port), "--state-db", "none", "--log-level", "ERROR"],
        env=env,
        cwd=tree,  # else `python -m hub` finds this tree's hub first
    )
    agents = None
    sockets: list[socket.socket] = []
    try:
        if not wait_until(lambda: get_json(base + "/healthz"), 30):
            raise SystemExit("viewer_burst: the hub did not answer")
        agent_url = f"ws://127.0.0.1:{port}/ws/agent"
        agents = subprocess.Popen(
            [sys.executable, "-m", "bench.load_agents", "--nodes", str(args.nodes), "--url", agent_url],
            stdin=subprocess.PIPE,  # its commands: it runs until stopped
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
        )
        if not wait_until(lambda: get_json(base + "/healthz")["nodes"] >= args.nodes, 120):
            raise SystemExit(f"viewer_burst: {args.nodes} nodes did not connect")
        time.sleep(5)  # every node's card rendered, the hub at rest
        process = psutil.Process(hub.pid)
        before = process.memory_info().rss
        sockets = [open_slow_viewer(port) for _ in range(args.viewers)]
        for sock in sockets:
            if b" 101 " not in sock.recv(256):
                raise SystemExit("viewer_burst: a viewer was refused")
        highest = before
        until = time.monotonic() + args.hold
        while time.monotonic() < until:
            highest = max(highest, process.memory_info().rss)
            time.sleep(0.1)
        fig.add("rss_before_mib", before / MIB, "MiB")
        fig.add("rss_highest_mib", highest / MIB, "MiB")
        fig.add("rss_added_per_viewer_mib", (highest - before) / MIB / args.viewers, "MiB", digits=2)
    finally:
        for sock in sockets:
            sock.close()
        for proc in (agents, hub):
            if proc is not None:
                proc.kill()
                proc.wait()
    return fig.done()


if __name__ == "__main__":
    raise SystemExit(main())
