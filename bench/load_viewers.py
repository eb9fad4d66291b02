"""Worker: simulated browsers on ``/ws/view``, counting what they receive.

Every pushed message is HTML whose top-level elements carry ids (:mod:`frontend.element_ids`):
``host-<id>``, ``gpu-<i>-<id>`` (a part that changed) and ``node-<id>`` (a whole card, which
contains its parts). Every viewer counts the parts it receives and the bytes; the first ``--probes`` viewers
also read each host part's *mark* (the sample time spelled by the simulated agents, see
:mod:`bench.simnode`) to get latency from the agent's sample to this viewer's receipt, and count
only parts whose sample falls in the window, exactly. Other viewers count by receipt time (the
agents keep a quiet gap around the window, so that is exact too while latency stays under it).

With ``--shown K`` each viewer, once it has its full state, tells the hub it shows K cards (as
the page does, :mod:`hub.view_show`): viewer ``i`` the nodes ``n<i*K>`` to ``n<i*K+K-1>``
(modulo ``--nodes``), a wall scrolled to its own place, so no two viewers share their bytes.

Commands (JSON lines on stdin): ``{"cmd": "window", "count_from": t, "count_to": t,
"start": t1, "end": t2}``, ``{"cmd": "report"}``, ``{"cmd": "stop"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.simnode import mark_age_ms, mark_from_fragment, mark_of
from bench.workers import commands, emit, next_command, quantiles_ms
from hub.fanout import MORE_ATTRIBUTE

# A card, host part or GPU row: group 1 the tag, 2 "host", 3 a GPU index, 4 the node id.
PART_RE = re.compile(rb'<([a-z]+) id="(?:node-|(host)-|gpu-([0-9]+)-)([^"]+)"')
HOST_START = b'<div id="host-'
GPU_START = b'<div id="gpu-'
FULL_STATE_MORE = re.compile(rb'<main id="nodes"[^>]*\s' + MORE_ATTRIBUTE.encode() + rb'="(\d+)"')
SPARK_ID = b' id="spark-'  # sparklines: pushed as history buckets close, not counted as updates


@dataclass
class Window:
    count_from: float = float("inf")
    count_to: float = float("-inf")
    start_ms: int = 0  # marks (sample times in ms modulo 10^8)
    end_ms: int = 0
    start_s: float = float("inf")
    end_s: float = float("-inf")

    def receipt_counts(self, now: float) -> bool:
        return self.count_from <= now <= self.count_to

    def mark_counts(self, mark: int) -> bool:
        if self.start_ms <= self.end_ms:
            return self.start_ms <= mark < self.end_ms
        return mark >= self.start_ms or mark < self.end_ms  # the marks wrapped in the window


@dataclass
class ViewerTally:
    probe: bool
    messages: int = 0
    first_message_bytes: int = 0  # the full state on joining, all its parts
    full_state_parts_left: int = 0
    bytes_in_window: int = 0
    bytes_in_measure: int = 0  # received during [start, end]: compared with the bare server
    host: int = 0
    gpu: int = 0
    cards: int = 0
    removals: int = 0
    sparks: int = 0
    late_outside_window: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    payload_sizes: list[int] = field(default_factory=list)
    closed: str | None = None
    shown: list[int] | None = None  # node indexes this viewer shows; None: every node
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def count_parts(payload: bytes, tally: ViewerTally) -> None:
    """Counts the top-level parts in a payload by receipt time (cheap: C-level byte counts)."""
    if b' id="node-' in payload:  # a card (with nested parts) or a removal
        for kind, _node, _mark in _top_level_parts(payload):
            _add(tally, kind)
        return
    tally.host += payload.count(HOST_START)
    tally.gpu += payload.count(GPU_START)


def probe_parts(payload: bytes, tally: ViewerTally, window: Window, received_at: float) -> None:
    """Counts parts whose sample is in the window and records each host part's latency."""
    in_window = False
    tally.sparks += payload.count(SPARK_ID)  # counted by probes only (every viewer gets the same)
    for kind, _node, mark in _top_level_parts(payload, with_marks=True):
        if kind == "host":
            if mark is None:
                continue
            tally.latencies_ms.append(float(mark_age_ms(mark, received_at)))
            in_window = window.mark_counts(mark)
            if in_window:
                tally.host += 1
            else:
                tally.late_outside_window += 1
        elif kind == "gpu":
            # a node's GPU rows follow its host part in the same push: same sample
            if in_window:
                tally.gpu += 1
        else:
            _add(tally, kind)


def _add(tally: ViewerTally, kind: str) -> None:
    if kind == "host":
        tally.host += 1
    elif kind == "gpu":
        tally.gpu += 1
    elif kind == "card":
        tally.cards += 1
    elif kind == "removal":
        tally.removals += 1


def _top_level_parts(payload: bytes, with_marks: bool = False) -> list[tuple[str, str, int | None]]:
    """(kind, node id, mark) of each top-level part; parts nested in a card are skipped."""
    parts: list[tuple[str, str, int | None]] = []
    skip_until = -1
    for found in PART_RE.finditer(payload):
        if found.start() < skip_until:
            continue
        tag, node = found[1], found[4].decode()
        if tag == b"article":
            parts.append(("card", node, None))
            skip_until = payload.find(b"</article>", found.end())
        elif tag == b"template":
            parts.append(("removal", node, None))
        elif found[2]:
            mark = mark_from_fragment(payload, found.end()) if with_marks else None
            parts.append(("host", node, mark))
        elif found[3] is not None:
            parts.append(("gpu", node, None))
    return parts


async def run_viewer(ws: ClientConnection, tally: ViewerTally, window: Window) -> None:
    try:
        async for message in ws:
            received_at = time.time()
            payload = message if isinstance(message, bytes) else message.encode()
            if tally.messages == 0 or tally.full_state_parts_left:  # the full state, maybe in parts
                tally.first_message_bytes += len(payload)
                if tally.messages == 0:
                    more = FULL_STATE_MORE.match(payload)
                    tally.full_state_parts_left = int(more[1]) if more else 0
                else:
                    tally.full_state_parts_left -= 1
                tally.messages += 1
                if not tally.full_state_parts_left:
                    tally.ready.set()
                continue
            tally.messages += 1
            if window.start_s <= received_at <= window.end_s:
                tally.bytes_in_measure += len(payload)
                if tally.probe:
                    tally.payload_sizes.append(len(payload))
            if tally.probe:
                if received_at >= window.count_from:
                    tally.bytes_in_window += len(payload) if window.receipt_counts(received_at) else 0
                    probe_parts(payload, tally, window, received_at)
            elif window.receipt_counts(received_at):
                tally.bytes_in_window += len(payload)
                count_parts(payload, tally)
    except ConnectionClosed as exc:
        tally.closed = f"{exc.rcvd.code if exc.rcvd else 1006}"
    finally:
        tally.ready.set()


async def main_async(args: argparse.Namespace) -> None:
    window = Window()
    tallies: list[ViewerTally] = []
    connections: list[ClientConnection] = []
    tasks: list[asyncio.Task[None]] = []
    failures: list[str] = []
    extensions: set[str] = set()
    started = time.monotonic()
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def open_one(i: int) -> None:
        async with gate:
            try:
                ws = await connect(
                    args.url,
                    origin=args.origin,
                    open_timeout=120,
                    ping_interval=20,
                    ping_timeout=120,
                    close_timeout=2,
                    max_size=None,  # a browser takes a full state of any size
                    max_queue=64,
                    compression="deflate" if args.offer_deflate else None,  # browsers offer it
                )
            except Exception as exc:  # any failure is reported, not raised
                failures.append(repr(exc))
                return
            extensions.add(ws.response.headers.get("Sec-WebSocket-Extensions", "") if ws.response else "")
            tally = ViewerTally(probe=i < args.probes)
            tallies.append(tally)
            connections.append(ws)
            tasks.append(asyncio.create_task(run_viewer(ws, tally, window)))
            await tally.ready.wait()  # its full state arrived: the next may connect
            if args.shown:
                tally.shown = [(i * args.shown + k) % args.nodes for k in range(args.shown)]
                await ws.send(json.dumps({"show": [f"n{index:05d}" for index in tally.shown]}))
            print(f"viewer {i} ready after {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    await asyncio.gather(*(open_one(i) for i in range(args.viewers)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(t.ready.wait() for t in tallies)), 120)
    emit(
        "connected",
        n=len(connections),
        failed=len(failures),
        first_failures=failures[:3],
        got_full_state=sum(1 for t in tallies if t.messages),
        full_state_bytes=max((t.first_message_bytes for t in tallies), default=0),
        connect_s=round(time.monotonic() - started, 2),
        extensions=sorted(extensions),
    )
    reader = await commands()
    while True:
        command = await next_command(reader)
        if command["cmd"] == "window":
            window.count_from = command["count_from"]
            window.count_to = command["count_to"]
            window.start_ms = mark_of(command["start"])
            window.end_ms = mark_of(command["end"])
            window.start_s, window.end_s = command["start"], command["end"]
        elif command["cmd"] == "report":
            probes = [t for t in tallies if t.probe]
            emit(
                "report",
                viewers=[
                    {
                        "probe": t.probe,
                        "host": t.host,
                        "gpu": t.gpu,
                        "cards": t.cards,
                        "removals": t.removals,
                        "sparks": t.sparks,
                        "messages": t.messages,
                        "bytes_in_window": t.bytes_in_window,
                        "bytes_in_measure": t.bytes_in_measure,
                        "late_outside_window": t.late_outside_window,
                        "closed": t.closed,
                        "shown": t.shown,
                    }
                    for t in tallies
                ],
                latency_ms=quantiles_ms([ms for t in probes for ms in t.latencies_ms if _in_count(ms)]),
                payload_sizes=probes[0].payload_sizes if probes else [],
            )
        elif command["cmd"] == "stop":
            break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)


def _in_count(ms: float) -> bool:
    return ms < 3_600_000  # an hour: anything larger is a wrapped or foreign mark


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_viewers", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="ws://host:port/ws/view")
    parser.add_argument("--viewers", type=int, required=True)
    parser.add_argument("--probes", type=int, default=4, help="viewers that read marks (latency)")
    parser.add_argument("--origin", default=None, help="Origin header, as a browser sends")
    parser.add_argument("--connect-concurrency", type=int, default=5)
    parser.add_argument("--no-deflate", dest="offer_deflate", action="store_false")
    parser.add_argument("--shown", type=int, default=0, help="cards each viewer shows (0: every node)")
    parser.add_argument("--nodes", type=int, default=0, help="nodes in the lab (with --shown)")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
