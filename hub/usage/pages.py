"""The memory's pages, ``/usage`` and ``/events``: server-rendered, the queries run on the
store's thread. (The node page's stored part and the header's line: :mod:`hub.usage.embed`.)"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import quote

from markupsafe import escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from frontend.usage_views import event_lines, usage_view
from hub.pages import theme_from
from hub.state import HubState
from hub.store import StoreError
from hub.usage.api import BadRequest, events_query, usage_query
from hub.usage.embed import memory_of, short_problem
from hub.usage.schema import EVENT_KINDS
from hub.usage.store import BY_COLUMNS
from hub.usage.timerange import NAMED_DAYS, RangeError, iso

RANGE_LABELS = {"today": "today", "7d": "7 days", "30d": "30 days"}
_HTML_HEADERS = {"Cache-Control": "no-store"}
_Query = TypeVar("_Query")


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _no_memory(what: str) -> Response:
    return HTMLResponse(
        f"<!doctype html><title>{what}</title><p>This hub keeps no memory (no state file: --state-db none).</p>",
        404,
    )


def _query_or_default(
    read: Callable[[Mapping[str, str]], _Query], params: Mapping[str, str], default: Mapping[str, str]
) -> tuple[_Query, str]:
    """The page's query ``read`` from the URL's ``params``; when they are bad, the query of
    ``default`` and the problem in words, which the page shows above what it found."""
    try:
        return read(params), ""
    except (RangeError, BadRequest) as exc:
        return read(default), str(exc)


async def usage_page(request: Request) -> Response:
    memory = memory_of(request)
    if memory is None:
        return _no_memory("usage")
    hub: HubState = request.app.state.hub
    params = request.query_params
    user = (params.get("user") or "")[:256] or None
    now = hub.scene.now()
    (start, end, by, query), error = _query_or_default(
        lambda given: usage_query(memory, given, now), params, {"by": "user"}
    )
    try:
        report = await memory.read(query)
    except (StoreError, sqlite3.Error) as exc:
        return HTMLResponse(
            f"<!doctype html><title>usage</title><p>The hub's memory cannot be read now.</p>"
            f"<p>{_escape(short_problem(str(exc)))}</p>",
            503,
        )
    range_name = params.get("range", "")
    if range_name not in NAMED_DAYS:
        range_name = ""
    if not params.get("from") and not params.get("to") and not range_name:
        range_name = "today"
    range_text = RANGE_LABELS.get(range_name) or f"{iso(start)} to {iso(end)}"
    view = usage_view(report.rows, report.daily, by, range_text, dict(params), report.table, user)
    keep_range = "&".join(f"{k}={_q(params[k])}" for k in ("range", "from", "to") if params.get(k))
    html = hub.renderer.usage_page(
        v=view,
        root_path=_root(request),
        theme=theme_from(params),
        ranges=list(RANGE_LABELS.items()),
        range_name=range_name,
        keep_by=f"by={_q(by)}&",
        user=user or "",
        user_query=f"&user={_q(user)}" if user else "",
        keep_range=keep_range,
        from_text=(params.get("from") or "")[:40],
        to_text=(params.get("to") or "")[:40],
        by_choices=list(BY_COLUMNS),
        error=error,
        busy_above=f"{memory.accounting.busy_above_percent:g}",
    )
    return HTMLResponse(html, 400 if error else 200, headers=_HTML_HEADERS)


async def events_page(request: Request) -> Response:
    memory = memory_of(request)
    if memory is None:
        return _no_memory("events")
    hub: HubState = request.app.state.hub
    params = request.query_params
    query, error = _query_or_default(events_query, params, {})
    try:
        events = await memory.read(query)
    except (StoreError, sqlite3.Error) as exc:
        events = []
        error = f"The hub's memory cannot be read now: {short_problem(str(exc))}"
    html = hub.renderer.events_page(
        events=event_lines(events),
        root_path=_root(request),
        theme=theme_from(params),
        node=(params.get("node") or "")[:256],
        kind=params.get("kind", ""),
        kinds=EVENT_KINDS,
        since=(params.get("since") or "")[:40],
        until=(params.get("until") or "")[:40],
        error=error,
    )
    return HTMLResponse(html, 400 if error and not events else 200, headers=_HTML_HEADERS)


def _q(text: str) -> str:
    return quote(text, safe="")


def _escape(text: str) -> str:
    return str(escape(text))
