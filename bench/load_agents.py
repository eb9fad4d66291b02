"""Worker: many simulated agents in one asyncio process, speaking the real agent protocol.

Each agent connects to ``--url`` (a hub's ``/ws/agent`` or the bare broadcast server), sends its
hello, then one delta every ``1/rate`` s at its own random phase: the protocol's ``encode`` of
merge patches made by its ``make_patch`` (precomputed per :class:`bench.simnode.Family`, so
thousands of agents fit in one process). Driven over stdin/stdout by
:mod:`bench.hub_load` (JSON lines, see :mod:`bench.workers`):

- ``{"cmd": "window", "quiet_from": t, "start": t1, "end": t2}`` (epoch seconds): from
  ``quiet_from`` on, deltas carry nothing visible (only a new ``sampled_at``), except between
  ``start`` and ``end``, when changing samples flow again. Deltas sent in ``[start, end)`` are the expected updates.
- ``{"cmd": "report"}`` -> a ``report`` event (with ``per_node``: each node's deltas in the
  window and busy GPUs, by index from ``--first``, for viewers that show only some nodes);
  ``{"cmd": "stop"}`` closes every connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.simnode import Family, SimAgent
from bench.workers import commands, emit, next_command, quantiles_ms


@dataclass
class Window:
    quiet_from: float = float("inf")
    start: float = float("inf")
    end: float = float("inf")

    def deltas_flow(self, now: float) -> bool:
        return now < self.quiet_from or self.start <= now < self.end

    def counts(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass
class Tally:
    sent: int = 0
    deltas_in_window: int = 0
    host_expected: int = 0
    gpu_expected: int = 0
    skipped_ticks: int = 0
    closed: int = 0
    send_lag_ms: list[float] = field(default_factory=list)
    per_node: dict[str, int] = field(default_factory=dict)  # deltas in the window, by node name


async def run_agent(
    sim: SimAgent,
    ws: ClientConnection,
    rate_hz: float,
    window: Window,
    tally: Tally,
    rng: random.Random,
) -> None:
    loop = asyncio.get_running_loop()
    interval_s = 1.0 / rate_hz
    next_at = loop.time() + rng.uniform(0, interval_s)
    try:
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag_s = loop.time() - next_at
            now = time.time()
            changed = window.deltas_flow(now)
            await ws.send(sim.next_frame(now, quiet=not changed))
            tally.sent += 1
            if changed and window.counts(now):
                tally.deltas_in_window += 1
                tally.host_expected += 1
                tally.gpu_expected += sim.busy_gpus
                tally.per_node[sim.name] = tally.per_node.get(sim.name, 0) + 1
                tally.send_lag_ms.append(lag_s * 1000)
            next_at += interval_s
            if next_at < loop.time():  # the generator fell behind: skip, as the real agent does
                tally.skipped_ticks += 1
                next_at = loop.time() + interval_s
    except ConnectionClosed:
        tally.closed += 1


async def drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def main_async(args: argparse.Namespace) -> None:
    window = Window()
    tally = Tally()
    rng = random.Random(args.seed)
    indexes = range(args.first, args.first + args.nodes)
    families = {
        k: Family(
            args.seed * 1000 + k,
            args.busy_fraction,
            1 / args.rate,
            mig=args.mig_every > 0 and k % args.mig_every == 0,
        )
        for k in sorted({i % args.families for i in indexes})
    }
    sims = [SimAgent(f"n{i:05d}", families[i % args.families]) for i in indexes]
    connections: list[ClientConnection] = []
    failures: list[str] = []
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def open_one(sim: SimAgent) -> None:
        async with gate:
            try:
                ws = await connect(
                    args.url,
                    open_timeout=30,
                    ping_interval=20,
                    ping_timeout=20,
                    close_timeout=2,
                    max_size=1 << 20,
                    compression=None,  # as the real agent
                )
            except Exception as exc:  # any failure is reported, not raised
                failures.append(f"{sim.name}: {exc!r}")
                return
            await ws.send(sim.hello_frame())
            connections.append(ws)
            tasks.append(asyncio.create_task(run_agent(sim, ws, args.rate, window, tally, rng)))
            tasks.append(asyncio.create_task(drain(ws)))

    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    await asyncio.gather(*(open_one(sim) for sim in sims))
    emit(
        "connected",
        n=len(connections),
        failed=len(failures),
        first_failures=failures[:3],
        connect_s=round(time.monotonic() - started, 2),
        busy_gpus=sum(s.busy_gpus for s in sims),
    )
    reader = await commands()
    while True:
        command = await next_command(reader)
        if command["cmd"] == "window":
            window.quiet_from = command["quiet_from"]
            window.start = command["start"]
            window.end = command["end"]
        elif command["cmd"] == "report":
            emit(
                "report",
                sent=tally.sent,
                deltas_in_window=tally.deltas_in_window,
                host_expected=tally.host_expected,
                gpu_expected=tally.gpu_expected,
                skipped_ticks=tally.skipped_ticks,
                closed=tally.closed,
                send_lag_ms=quantiles_ms(tally.send_lag_ms),
                per_node=[[tally.per_node.get(sim.name, 0), sim.busy_gpus] for sim in sims],
            )
        elif command["cmd"] == "stop":
            break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_agents", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="ws://host:port/ws/agent")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first node (names n00000...)")
    parser.add_argument("--rate", type=float, default=1.0, help="deltas per second per agent")
    parser.add_argument("--busy-fraction", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--families", type=int, default=100, help="distinct simulated behaviours")
    parser.add_argument(
        "--mig-every",
        type=int,
        default=0,
        help="every K-th family is a node of A100s in MIG mode (4: a quarter of the nodes; 0: none)",
    )
    parser.add_argument("--connect-concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
