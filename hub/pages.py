"""HTTP endpoints: the page, the JSON API and the health check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from hub.registry import Node
from hub.scene import ViewFilter
from hub.state import HubState


def _csv(params: Mapping[str, str], key: str) -> frozenset[str]:
    return frozenset(x.strip() for x in params.get(key, "").split(",") if x.strip())


def view_filter_from(params: Mapping[str, str]) -> ViewFilter:
    """Kiosk URL options: ``?group=a,b&node=gpu01,gpu02&gpus=1``."""
    return ViewFilter(
        groups=_csv(params, "group"),
        names=_csv(params, "node"),
        gpu_only=params.get("gpus", "") in ("1", "true", "yes"),
    )


async def page(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    root = request.scope.get("root_path", "").rstrip("/")
    view_filter = view_filter_from(request.query_params)
    query = request.url.query
    scene = hub.scene
    theme = "light" if request.query_params.get("theme") == "light" else "dark"
    density = "compact" if request.query_params.get("density") == "compact" else "normal"
    html = hub.renderer.page(
        root_path=root,
        ws_path=f"{root}/ws/view" + (f"?{query}" if query else ""),
        summary_html=scene.summary(scene.summary_view(view_filter)),
        cards=scene.cards(view_filter),
        theme=theme,
        density=density,
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
