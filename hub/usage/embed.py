"""The memory's parts of pages served by :mod:`hub.pages`: the wall header's line about the
store, and the node page's stored history (24-hour and 7-day charts) and recent events.

The node page reloads its live part every few seconds; its stored part (outside that part) is
read once per :data:`STORED_CACHE_S` per node, as the store changes only once per flush anyway.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from starlette.requests import Request

from frontend.usage_views import event_lines, memory_text, stored_charts
from hub.domain.nodes import Node
from hub.state import HubState
from hub.store import StoreError
from hub.usage.history import MINUTE_S, QUARTER_S
from hub.usage.store import read_events, read_history
from hub.usage.sync import MemorySync

STORED_CACHE_S = 30.0
NODE_EVENTS = 20
MAX_PROBLEM_CHARS = 240
MAX_CACHED_NODES = 1000
DAY_POINTS = 288  # 24 hours of 5-minute means (of the 1-minute buckets)
WEEK_POINTS = 672  # 7 days of 15-minute buckets


def memory_of(request: Request) -> MemorySync | None:
    memory: MemorySync | None = getattr(request.app.state, "memory", None)
    return memory


def short_problem(text: str | None) -> str:
    if not text:
        return ""
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 1] + "…"


def header_memory(request: Request) -> tuple[str, str]:
    """(the header's line about the store, the store's problem) for the wall page."""
    memory = memory_of(request)
    if memory is None:
        return "", ""
    info = memory.info
    line = memory_text(info.size_bytes, info.oldest_s, info.newest_s) if info else ""
    return line, short_problem(memory.problem)


async def stored_html(request: Request, node: Node) -> str:
    """The node page's stored part: 24-hour and 7-day charts and the node's recent events."""
    memory = memory_of(request)
    if memory is None:
        return ""
    cache = memory.node_page_cache
    cached = cache.get(node.node_id)
    now_mono = time.monotonic()
    if cached is not None and cached[0] > now_mono:
        return cached[1]
    hub: HubState = request.app.state.hub
    now = hub.scene.now()
    # the last point is the slot that holds now; the first, SPAN points before it
    day_step, week_step = 5 * MINUTE_S, QUARTER_S
    day_start = now - now % day_step - (DAY_POINTS - 1) * day_step
    week_start = now - now % week_step - (WEEK_POINTS - 1) * week_step
    node_id = node.node_id

    def read(db: sqlite3.Connection) -> tuple[Any, Any, Any]:
        return (
            read_history(db, node_id, MINUTE_S, day_start),
            read_history(db, node_id, QUARTER_S, week_start),
            read_events(db, node=node_id, limit=NODE_EVENTS),
        )

    problem = short_problem(memory.problem)
    try:
        day, week, events = await memory.read(read)
    except (StoreError, sqlite3.Error) as exc:
        day, week, events = {}, {}, []
        problem = short_problem(str(exc))
    hello = node.hello
    host_total = hello.host.get("mem_total_bytes") if hello else None
    gpu_totals = {str(g.get("index")): g.get("mem_total_bytes") for g in (hello.gpus if hello else [])}
    charts = stored_charts(
        node_id, "last 24 hours", day, host_total, gpu_totals, day_start, day_step, DAY_POINTS
    )
    charts += stored_charts(
        node_id, "last 7 days", week, host_total, gpu_totals, week_start, week_step, WEEK_POINTS
    )
    html = hub.renderer.stored(node_id, charts, event_lines(events), problem)
    if len(cache) > MAX_CACHED_NODES:
        cache.clear()
    cache[node_id] = (now_mono + STORED_CACHE_S, html)
    return html
