"""The baseline: a bare ``websockets`` server doing the least a hub could do with the same load.

Agents connect to ``/ws/agent`` and every frame is parsed (``orjson.loads``) and dropped. Viewers
connect to ``/ws/view``. On the hub's tick (10 Hz) the server sends every viewer, with
``websockets.broadcast``, a payload as big as the hub's payload on the same tick of its run (the
sizes come from ``--sizes``, a JSON list of byte counts recorded by a probe viewer, replayed in
a loop). No compression. ``GET /healthz`` answers ``{"nodes": n, "viewers": n}`` like the hub.

    python -m bench.bare_broadcast --port 8123 --sizes sizes.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path

import orjson
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

FILLER = b'<div id="gpu-0-x" class="gpu" data-state="busy"><span class="v">42%</span></div>\n'


class Bare:
    def __init__(self, sizes: list[int], tick_s: float) -> None:
        self.sizes = sizes or [0]
        self.tick_s = tick_s
        self.agents = 0
        self.viewers: set[ServerConnection] = set()
        self.messages = 0
        biggest = max(self.sizes)
        self.buffer = (FILLER * (biggest // len(FILLER) + 1))[:biggest]

    def healthz(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            body = json.dumps({"status": "ok", "nodes": self.agents, "viewers": len(self.viewers)})
            return connection.respond(HTTPStatus.OK, body + "\n")
        return None

    async def handler(self, connection: ServerConnection) -> None:
        path = connection.request.path if connection.request else ""
        if path.startswith("/ws/agent"):
            self.agents += 1
            try:
                async for message in connection:
                    orjson.loads(message)
                    self.messages += 1
            except ConnectionClosed:
                pass
            finally:
                self.agents -= 1
        elif path.startswith("/ws/view"):
            self.viewers.add(connection)
            try:
                await connection.send(b"<main></main>")  # the "full state", so viewers count as ready
                await connection.wait_closed()
            finally:
                self.viewers.discard(connection)

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        k = 0
        while True:
            next_at += self.tick_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            size = self.sizes[k % len(self.sizes)]
            k += 1
            if size and self.viewers:
                websockets.broadcast(self.viewers, self.buffer[:size])


async def main_async(args: argparse.Namespace, sizes: list[int]) -> None:
    bare = Bare(sizes, 1.0 / args.rate_hz)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        bare.handler,
        args.host,
        args.port,
        process_request=bare.healthz,
        compression=None,
        max_size=64 * 1024,
        ping_interval=20,
        ping_timeout=20,
    ):
        ticker = asyncio.create_task(bare.tick())
        await stop
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bare_broadcast", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sizes", help="JSON file: a list of payload sizes in bytes, one per tick")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="ticks per second (the hub's 10)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in json.loads(Path(args.sizes).read_text())] if args.sizes else [0]
    asyncio.run(main_async(args, sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
