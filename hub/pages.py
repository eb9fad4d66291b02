"""HTTP endpoints: the wall page, a node's detail page, the JSON API and the health check.

Kiosk URL options (bookmarkable): ``group=a,b`` and ``node=gpu01,gpu02`` filter by group or by
node name (or display name), ``gpus=1`` keeps nodes with GPUs, ``sort=name|status|free``,
``density=normal|compact|large``, ``theme=dark|light`` and ``cycle=<seconds>`` (show one
screenful at a time, turning pages when more nodes exist than fit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from hub.domain.nodes import Node
from hub.domain.people import PeopleSort
from hub.scene import ViewFilter
from hub.state import HubState
from hub.usage.embed import header_memory, stored_html

FILTER_KEYS = ("group", "node", "gpus")
SORTS = ("name", "status", "free")
DENSITIES = ("normal", "compact", "large")
MIN_CYCLE_S = 3.0
MAX_CYCLE_S = 3600.0


def _csv(params: Mapping[str, str], key: str) -> frozenset[str]:
    return frozenset(x.strip() for x in params.get(key, "").split(",") if x.strip())


def view_filter_from(params: Mapping[str, str]) -> ViewFilter:
    """Kiosk URL options: ``?group=a,b&node=gpu01,gpu02&gpus=1``; ``panel=users`` adds the
    people board (in the order ``people_sort=gpus|idle|held``), ``cards=0`` leaves the cards
    out (``/users``)."""
    board = ""
    if params.get("panel") == "users":
        board = _choice(params, "people_sort", tuple(PeopleSort))
    return ViewFilter(
        groups=_csv(params, "group"),
        names=_csv(params, "node"),
        gpu_only=params.get("gpus", "") in ("1", "true", "yes"),
        people_sort=board,
        cards=params.get("cards", "") not in ("0", "false", "no"),
    )


def filter_text(view_filter: ViewFilter) -> str:
    """The filter in words, for a wall it leaves empty; "" when there is none."""
    words = []
    if view_filter.groups:
        words.append("group " + ", ".join(sorted(view_filter.groups)))
    if view_filter.names:
        words.append("node " + ", ".join(sorted(view_filter.names)))
    if view_filter.gpu_only:
        words.append("nodes with GPUs")
    return " · ".join(words)


def _choice(params: Mapping[str, str], key: str, choices: tuple[str, ...]) -> str:
    value = params.get(key, "")
    return value if value in choices else choices[0]


def theme_from(params: Mapping[str, str]) -> str:
    return "light" if params.get("theme") == "light" else "dark"


def cycle_from(params: Mapping[str, str]) -> float:
    """Seconds per page in cycle mode; 0 (off) for a missing or unreadable value."""
    try:
        seconds = float(params.get("cycle", "0"))
    except ValueError:
        return 0.0
    if not math.isfinite(seconds) or seconds <= 0:
        return 0.0
    return min(max(seconds, MIN_CYCLE_S), MAX_CYCLE_S)


async def page(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    root = request.scope.get("root_path", "").rstrip("/")
    params = request.query_params
    view_filter = view_filter_from(params)
    query = request.url.query
    scene = hub.scene
    memory_line, memory_problem = header_memory(request)
    html = hub.renderer.page(
        root_path=root,
        ws_path=f"{root}/ws/view" + (f"?{query}" if query else ""),
        summary_html=scene.summary(scene.summary_view(view_filter)),
        cards=scene.cards(view_filter),
        theme=theme_from(params),
        density=_choice(params, "density", DENSITIES),
        sort=_choice(params, "sort", SORTS),
        cycle_s=cycle_from(params),
        hub_url=str(request.base_url).rstrip("/"),
        filter_text=filter_text(view_filter),
        unfiltered_query=urlencode([(k, v) for k, v in params.multi_items() if k not in FILTER_KEYS]),
        people_html=scene.people(scene.people_view(view_filter)),
        memory_line=memory_line,
        memory_problem=memory_problem,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


async def node_page(request: Request) -> Response:
    """``/node/<id>``: every field the agent reports, processes per GPU, the whole history."""
    hub: HubState = request.app.state.hub
    node = hub.registry.nodes.get(request.path_params["node_id"])
    if node is None:
        return HTMLResponse("<!doctype html><title>unknown node</title><p>No such node.</p>", 404)
    query = request.url.query
    html = hub.renderer.node_page(
        hub.scene.detail(node),
        root_path=request.scope.get("root_path", "").rstrip("/"),
        now_epoch_s=hub.scene.now(),
        theme=theme_from(request.query_params),
        back_query=f"?{query}" if query else "",
        stored_html=await stored_html(request, node),
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def node_json(hub: HubState, node: Node) -> dict[str, Any]:
    hello = node.hello
    return {
        "id": node.node_id,
        "display_name": node.display_name,
        "group": node.group,
        "status": node.status.value,
        "address": node.address,
        "last_seen_epoch_s": node.last_seen_wall or None,
        "sample_late": node.sample_late,
        "interval_s": node.interval_s,
        "agent_version": hello.agent_version if hello else None,
        "static": {"host": hello.host, "gpu_driver": hello.gpu_driver, "gpus": hello.gpus} if hello else None,
        "state": node.state,
    }


async def api_nodes(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    return JSONResponse({"nodes": [node_json(hub, n) for n in hub.registry.ordered()]})


async def healthz(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    return JSONResponse(
        {"status": "ok", "nodes": len(hub.registry.nodes), "viewers": len(hub.fanout.viewers)}
    )
