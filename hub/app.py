"""``create_app``: the hub's Starlette application, its state and its background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from frontend.render import Renderer
from hub.agent_ws import agent_endpoint
from hub.clock import SystemClock
from hub.fanout import Fanout, stop_task
from hub.liveness import run_sweeps
from hub.pages import api_nodes, healthz, page
from hub.registry import Clock, NodeRegistry
from hub.scene import Scene
from hub.settings import HubSettings
from hub.state import HubState
from hub.view_ws import view_endpoint


def build_state(settings: HubSettings, clock: Clock) -> HubState:
    registry = NodeRegistry(clock, settings.liveness, dict(settings.names))
    renderer = Renderer()
    scene = Scene(registry, renderer, settings.gpu_free, clock.wall)
    fanout = Fanout(registry, scene, settings.viewer_max_rate_hz)
    return HubState(settings=settings, registry=registry, renderer=renderer, scene=scene, fanout=fanout)


def create_app(settings: HubSettings | None = None, clock: Clock | None = None) -> Starlette:
    settings = settings or HubSettings()
    state = build_state(settings, clock or SystemClock())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(run_sweeps(state.registry, state.fanout)),
            asyncio.create_task(state.fanout.run()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                await stop_task(task)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/v1/nodes", api_nodes),
            Route("/healthz", healthz),
            WebSocketRoute("/ws/agent", agent_endpoint),
            WebSocketRoute("/ws/view", view_endpoint),
            Mount("/static", StaticFiles(packages=[("frontend", "static")]), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.hub = state
    return app
