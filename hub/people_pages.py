"""Who holds the GPUs, over HTTP: ``GET /api/v1/users`` (JSON) and ``/users`` (the people board,
kept live over the view WebSocket like the wall), plus the task that lets time turn quiet GPUs
idle-held (:meth:`hub.domain.idle.IdleHolders.tick`).

Both pages take the wall's node filter (``group``, ``node``, ``gpus``) and ``sort=gpus|idle|held``;
the view token guards them like every page (:class:`hub.security.ViewAuth`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from hub.domain.idle import IdleHolders
from hub.domain.nodes import NodeStatus
from hub.domain.people import HeldGpu, Holding, PeopleSort, holdings, sort_holdings
from hub.pages import FILTER_KEYS, theme_from, view_filter_from
from hub.state import HubState

TICK_EVERY_S = 1.0
# a process's fields the API gives, as the agent sent them (the rest are on /api/v1/nodes)
PROCESS_FIELDS = (
    "pid",
    "command",
    "gpu_mem_bytes",
    "started_epoch_s",
    "slurm_job_id",
    "slurm_step",
    "slurm_job_name",
    "slurm_job_user",
    "container_runtime",
    "container_id",
    "container_name",
    "pod_namespace",
    "pod_name",
    "pod_uid",
)


async def run_idle_ticks(idle_holders: IdleHolders, every_s: float = TICK_EVERY_S) -> None:
    """A quiet GPU sends no patch of its own: time alone makes it idle-held."""
    while True:
        await asyncio.sleep(every_s)
        idle_holders.tick()


def _sort_from(params: Mapping[str, str]) -> PeopleSort:
    value = params.get("sort", "")
    return PeopleSort(value) if value in tuple(PeopleSort) else PeopleSort.GPUS


def current_holdings(hub: HubState, params: Mapping[str, str]) -> list[Holding]:
    view_filter = view_filter_from(params)
    nodes = (
        (node.node_id, node.state)
        for node in hub.registry.ordered()
        if node.status is not NodeStatus.OFFLINE and view_filter.selects(node)
    )
    return list(holdings(nodes, hub.idle_holders.held()).values())


def _gpu_json(gpu: HeldGpu) -> dict[str, Any]:
    return {
        "node": gpu.node_id,
        "gpu_index": gpu.gpu_index,
        "mig_uuid": gpu.mig_uuid,
        "model": gpu.model,
        "gpu_mem_bytes": gpu.mem_bytes,
        "util_gpu_percent": gpu.util_gpu_percent,
        "idle_held_since_epoch_s": gpu.idle_since_epoch_s,
        "processes": [{key: proc.get(key) for key in PROCESS_FIELDS} for proc in gpu.processes],
    }


def holding_json(holding: Holding) -> dict[str, Any]:
    return {
        "user": holding.user,
        "gpus_held": len(holding.gpus),
        "gpu_mem_bytes": holding.mem_bytes,
        "idle_held": len(holding.idle),
        "oldest_process_started_epoch_s": holding.oldest_started_epoch_s,
        "gpus": [_gpu_json(gpu) for gpu in holding.gpus],
        "idle_held_gpus": [
            {
                "node": gpu.node_id,
                "gpu_index": gpu.gpu_index,
                "mig_uuid": gpu.mig_uuid,
                "since_epoch_s": gpu.idle_since_epoch_s,
            }
            for gpu in holding.idle
        ],
    }


async def api_users(request: Request) -> Response:
    """One entry per user holding GPU memory on a node that is not offline."""
    hub: HubState = request.app.state.hub
    params = request.query_params
    people = sort_holdings(current_holdings(hub, params), _sort_from(params))
    return JSONResponse({"users": [holding_json(h) for h in people]})


async def users_page(request: Request) -> Response:
    hub: HubState = request.app.state.hub
    params = request.query_params
    root = request.scope.get("root_path", "").rstrip("/")
    kept = [(key, value) for key, value in params.multi_items() if key in (*FILTER_KEYS, "theme")]
    view_filter = view_filter_from(
        {**dict(kept), "panel": "users", "people_sort": _sort_from(params).value, "cards": "0"}
    )
    ws_query = urlencode(
        [*kept, ("panel", "users"), ("people_sort", view_filter.people_sort), ("cards", "0")]
    )
    scene = hub.scene
    html = hub.renderer.users_page(
        root_path=root,
        ws_path=f"{root}/ws/view?{ws_query}",
        summary_html=scene.summary(scene.summary_view(view_filter)),
        people_html=scene.people(scene.people_view(view_filter)),
        theme=theme_from(params),
        back_query="?" + urlencode(kept) if kept else "",
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})
