"""``GET /api/v1/usage`` and ``GET /api/v1/events``: the memory's reports as JSON (or CSV).

- ``/api/v1/usage?from=<ISO date or time>&to=<...>&by=user|group|model|node[&format=csv]``
  (or ``range=today|7d|30d`` instead of from/to): one row per key with ``gpu_seconds``,
  ``busy_gpu_seconds``, ``idle_held_gpu_seconds`` and ``gpu_mem_byte_seconds``, the largest
  first; ``user=NAME`` keeps one user's rows (by node, say). Ranges are read in whole hours while the hourly table holds them
  (``usage_hourly_keep_d``), in whole local days before that; the answer says which.
- ``/api/v1/events?node=&since=&until=&kind=a,b&limit=``: the event log, newest first.

A hub without a state file answers 404; one whose file cannot be used now, 503 with the reason.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.store import StoreError
from hub.usage.embed import memory_of
from hub.usage.schema import EVENT_KINDS
from hub.usage.store import BY_COLUMNS, DAY_S, csv_lines, read_events, usage_report
from hub.usage.sync import MemorySync
from hub.usage.timerange import MAX_TEXT_CHARS, RangeError, iso, parse_time, resolve

T = TypeVar("T")
MAX_EVENTS = 1000
MAX_NAME_CHARS = 256


class BadRequest(ValueError):
    pass


def _no_memory() -> Response:
    return JSONResponse({"error": "this hub keeps no memory (no state file: --state-db none)"}, 404)


def _unavailable(exc: Exception) -> Response:
    return JSONResponse({"error": f"the hub's memory cannot be read now: {exc}"}, 503)


def by_from(params: Any) -> str:
    by = params.get("by", "user")
    if by not in BY_COLUMNS:
        raise BadRequest(f"by: one of {', '.join(BY_COLUMNS)}, got {by[:MAX_TEXT_CHARS]!r}")
    return str(by)


def usage_query(
    memory: MemorySync, params: Any, now_s: float
) -> tuple[float, float, str, Callable[..., Any]]:
    """(from, to, by, the query to run on the store's thread) for a request's parameters."""
    start, end = resolve(params.get("from"), params.get("to"), params.get("range"), now_s)
    by = by_from(params)
    user = params.get("user") or None
    if user is not None and len(user) > MAX_NAME_CHARS:
        raise BadRequest(f"user: at most {MAX_NAME_CHARS} characters")
    hourly_since = now_s - memory.limits.usage_hourly_keep_d * DAY_S
    return start, end, by, lambda db: usage_report(db, start, end, by, hourly_since, user)


async def api_usage(request: Request) -> Response:
    memory = memory_of(request)
    if memory is None:
        return _no_memory()
    params = request.query_params
    try:
        start, end, by, query = usage_query(memory, params, request.app.state.hub.scene.now())
        report = await memory.read(query)
    except (RangeError, BadRequest) as exc:
        return JSONResponse({"error": str(exc)}, 400)
    except (StoreError, sqlite3.Error) as exc:
        return _unavailable(exc)
    if params.get("format") == "csv":
        out = io.StringIO()
        csv.writer(out).writerows(csv_lines(report.rows, by))
        name = f"usage-by-{by}-{iso(start)[:10]}-{iso(end)[:10]}.csv"
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
        )
    return JSONResponse(
        {
            "from": iso(start),
            "to": iso(end),
            "by": by,
            "table": report.table,
            "rows": [
                {
                    by: row.key,
                    "gpu_seconds": row.gpu_seconds,
                    "busy_gpu_seconds": row.busy_gpu_seconds,
                    "idle_held_gpu_seconds": row.idle_held_gpu_seconds,
                    "gpu_mem_byte_seconds": row.gpu_mem_byte_seconds,
                }
                for row in report.rows
            ],
        },
        headers={"Cache-Control": "no-store"},
    )


def events_query(params: Any) -> Callable[..., Any]:
    """The event-log query for ``node``, ``since``, ``until``, ``kind`` and ``limit``."""
    node = params.get("node") or None
    since = parse_time(params["since"], "since") if params.get("since") else None
    until = parse_time(params["until"], "until") if params.get("until") else None
    kinds = tuple(k.strip() for k in params.get("kind", "").split(",") if k.strip())
    unknown = [k for k in kinds if k not in EVENT_KINDS]
    if unknown:
        raise BadRequest(f"kind: {unknown[0][:MAX_TEXT_CHARS]!r} is none of {', '.join(EVENT_KINDS)}")
    try:
        limit = int(params.get("limit", "200"))
    except ValueError:
        raise BadRequest("limit: expected a number of events") from None
    if not 1 <= limit <= MAX_EVENTS:
        raise BadRequest(f"limit: 1..{MAX_EVENTS}")
    if node is not None and len(node) > MAX_NAME_CHARS:
        raise BadRequest("node: too long")
    return lambda db: read_events(db, node, since, until, kinds, limit)


async def api_events(request: Request) -> Response:
    memory = memory_of(request)
    if memory is None:
        return _no_memory()
    try:
        events = await memory.read(events_query(request.query_params))
    except (RangeError, BadRequest) as exc:
        return JSONResponse({"error": str(exc)}, 400)
    except (StoreError, sqlite3.Error) as exc:
        return _unavailable(exc)
    return JSONResponse(
        {
            "events": [
                {
                    "at": iso(e.at_s),
                    "at_epoch_s": e.at_s,
                    "node": e.node_id,
                    "kind": e.kind,
                    "gpu": e.gpu,
                    "summary": e.summary,
                }
                for e in events
            ]
        },
        headers={"Cache-Control": "no-store"},
    )
