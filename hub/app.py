"""``create_app``: the hub's Starlette application, its state and its background tasks.

Endpoints: the routes below, plus ``/ws/agent`` (:data:`hub.agent_ws.AGENT_PATH`), which
:class:`hub.agent_ws.AgentRoute` serves from the middleware stack, right after the proxy and Host
checks and before the page headers and the view token: an agent connection stays open for days,
and there it holds no router or page middleware frames. Its refusals (a missing or wrong token)
happen before the WebSocket is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from frontend.render import Renderer
from hub.agent_ws import AgentRoute
from hub.alerts.service import AlertService
from hub.alerts.web import alert_routes
from hub.clock import SystemClock
from hub.domain.events import SampleLate, StatusChanged
from hub.domain.idle import IdleHolders
from hub.domain.nodes import Clock
from hub.fanout import Fanout, stop_task
from hub.history import History
from hub.liveness import log_sample_late, log_status_change, run_sweeps
from hub.metrics import metrics
from hub.pages import api_nodes, healthz, node_page, page
from hub.people_pages import api_users, run_idle_ticks, users_page
from hub.registry import NodeRegistry
from hub.scene import Scene
from hub.security import FailureLog, OriginPolicy, ProxyTrust, SecurityHeaders, ViewAuth, admin_token
from hub.settings import HubSettings
from hub.state import HubState
from hub.store import StoreSync, forget_node
from hub.usage.api import api_events, api_usage
from hub.usage.pages import events_page, usage_page
from hub.usage.sync import MemorySync
from hub.view_ws import view_endpoint


def build_state(settings: HubSettings, clock: Clock) -> HubState:
    registry = NodeRegistry(clock, settings.liveness, dict(settings.names), settings.gpu_free)
    registry.events.subscribe(StatusChanged, log_status_change)
    registry.events.subscribe(SampleLate, log_sample_late)
    idle_holders = IdleHolders(registry.events, clock, settings.idle_holders)
    renderer = Renderer()
    scene = Scene(registry, renderer, settings.gpu_free, clock.wall, History(settings.history_s))
    fanout = Fanout(registry, scene, settings.viewer_max_rate_hz, clock.monotonic)
    return HubState(
        settings=settings,
        registry=registry,
        renderer=renderer,
        scene=scene,
        fanout=fanout,
        idle_holders=idle_holders,
    )


def create_app(settings: HubSettings | None = None, clock: Clock | None = None) -> Starlette:
    settings = settings or HubSettings()
    clock = clock or SystemClock()
    state = build_state(settings, clock)
    alerts = (
        AlertService(settings.alerts, state.registry.events, settings.names, settings.gpu_free, clock)
        if settings.alerts.enabled
        else None
    )
    if alerts is not None:
        state.scene.alert_strip = alerts.strip
    store = (
        StoreSync(settings.state_db, state.registry, settings.names, max_nodes=settings.max_nodes)
        if settings.state_db
        else None
    )
    memory = None
    if store is not None and settings.state_db:
        # usage, history and the event log, in the same file and on the same thread
        memory = MemorySync(
            store,
            settings.state_db,
            state.registry,
            clock,
            settings.memory,
            settings.idle_holders,
            settings.liveness,
            settings.names,
        )
    failures = FailureLog()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if store is not None:
            await store.open()  # remembered nodes come back as offline
        if alerts is not None:
            await alerts.start(store)  # alerts firing before a restart are not sent again
        if memory is not None:
            await memory.open()
        tasks = [
            asyncio.create_task(run_sweeps(state.registry)),
            asyncio.create_task(state.fanout.run()),
            asyncio.create_task(run_idle_ticks(state.idle_holders)),
        ]
        if store is not None:
            tasks.append(asyncio.create_task(store.run()))
        if alerts is not None:
            tasks.append(asyncio.create_task(alerts.run()))
        if memory is not None:
            tasks.append(asyncio.create_task(memory.run()))
        try:
            yield
        finally:
            for task in tasks:
                await stop_task(task)
            if alerts is not None:
                await alerts.close()
            if memory is not None:
                await memory.flush()  # what was counted since the last flush
            if store is not None:
                await store.close()  # last seen of every node, written once more

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/node/{node_id}", node_page),
            Route("/usage", usage_page),
            Route("/events", events_page),
            Route("/api/v1/nodes", api_nodes),
            Route("/api/v1/users", api_users),
            Route("/users", users_page),
            Route("/api/v1/nodes/{node_id}", forget_node, methods=["DELETE"]),
            Route("/api/v1/usage", api_usage),
            Route("/api/v1/events", api_events),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            *alert_routes(),
            WebSocketRoute("/ws/view", view_endpoint),
            # /ws/agent: AgentRoute in middleware() below (see the module's docstring)
            Mount("/static", StaticFiles(packages=[("frontend", "static")]), name="static"),
        ],
        lifespan=lifespan,
        middleware=middleware(settings, state, failures),
    )
    app.state.hub = state
    app.state.store = store
    app.state.alerts = alerts
    app.state.memory = memory
    app.state.failures = failures
    app.state.origins = OriginPolicy(settings.allowed_origins)
    return app


def middleware(settings: HubSettings, state: HubState, failures: FailureLog) -> list[Middleware]:
    """Outermost first: trusted proxies, trusted Host names, the agents' WebSocket (its own
    bearer token), then for pages and viewers: headers and the view token."""
    stack = [
        Middleware(ProxyTrust, forwarded_allow_ips=settings.forwarded_allow_ips),
        Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.trusted_hosts), www_redirect=False),
        Middleware(AgentRoute, hub=state, failures=failures),
        Middleware(SecurityHeaders),
    ]
    if settings.view_token:
        stack.append(
            Middleware(
                ViewAuth,
                view_token=settings.view_token,
                admin_token=admin_token(settings),
                failures=failures,
            )
        )
    return stack
