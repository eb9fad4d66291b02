"""``/ws/view``: one browser. It gets the full state, then rendered changes; all it may send is
which cards it shows (:mod:`hub.view_show`).

At most :data:`~hub.fanout.MAX_VIEW_FILTERS` different filters (kiosk URL options) are in use
at once: a viewer with a new one past that is closed with 1008 and the refusal logged.

A viewer that sends anything else, or more than it may, is not a browser running the hub's
page: it is closed with the close code :func:`hub.view_show.parse_show` gives (1003, 1007, 1008
or 1009) and the refusal logged (at most once per source per minute).

A browser's ``Origin`` must be the hub's own or an allowed one (HTTP 403 before accept
otherwise); the view token, when configured, was checked by :class:`hub.security.ViewAuth`.
A viewer that stops reading is dropped once a send has waited ``viewer_send_timeout_s``; its
memory in the hub meanwhile is references to shared batches (or to the shared full state it
will get next) plus the socket's write buffer.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.frames import CloseCode

from hub.fanout import MAX_VIEW_FILTERS, Viewer
from hub.memory import connection_closed
from hub.pages import view_filter_from
from hub.security import FailureLog, OriginPolicy, client_address
from hub.state import HubState
from hub.view_show import ShowRate, parse_show
from node_agent.protocol import CLOSE_POLICY, ProtocolError

CLOSE_TIMEOUT_S = 2.0


async def view_endpoint(websocket: WebSocket) -> None:
    try:
        await _view(websocket)
    finally:
        connection_closed()


async def _view(websocket: WebSocket) -> None:
    hub: HubState = websocket.app.state.hub
    origins: OriginPolicy = websocket.app.state.origins
    failures: FailureLog = websocket.app.state.failures
    if not origins.allows(websocket.scope):
        failures.refused(
            client_address(websocket.scope), f"a viewer from origin {websocket.headers.get('origin')!r}"
        )
        await websocket.send_denial_response(PlainTextResponse("origin not allowed\n", 403))
        return
    await websocket.accept()
    view_filter = view_filter_from(websocket.query_params)
    if not hub.fanout.takes(view_filter):
        failures.refused(client_address(websocket.scope), "a viewer with one filter too many")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                websocket.close(CLOSE_POLICY, f"over {MAX_VIEW_FILTERS} different filters in use"),
                CLOSE_TIMEOUT_S,
            )
        return
    viewer = Viewer(websocket.send_bytes, view_filter, hub.settings.viewer_send_timeout_s)
    hub.fanout.add_viewer(viewer)
    sender = asyncio.create_task(viewer.run())
    reader = asyncio.create_task(_read(websocket, viewer, hub))
    code: int = CloseCode.NORMAL_CLOSURE
    reason = ""
    try:
        done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        if sender in done:  # the viewer fell too far behind, or its socket failed
            code, reason = CLOSE_POLICY, "too slow to take updates"
        elif reader.exception() is None and (refusal := reader.result()) is not None:
            code, reason = refusal.close_code, refusal.reason
            failures.refused(client_address(websocket.scope), f"a viewer's message on /ws/view ({reason})")
    finally:
        hub.fanout.remove_viewer(viewer)
        for task in (sender, reader):
            task.cancel()
        await asyncio.gather(sender, reader, return_exceptions=True)  # a gone browser is no error
        # a frozen browser never lets the close frame out: give up on it after a moment
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code, reason), CLOSE_TIMEOUT_S)


async def _read(websocket: WebSocket, viewer: Viewer, hub: HubState) -> ProtocolError | None:
    """Takes the page's shown sets until the browser leaves (``None``) or sends something else
    (the refusal)."""
    rate = ShowRate()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] != "websocket.receive":
                return None
            if not rate.take():
                return ProtocolError("more messages than a page sends", CLOSE_POLICY)
            try:
                shown = parse_show(message)
            except ProtocolError as refusal:
                return refusal
            hub.fanout.show(viewer, shown)
    return None
